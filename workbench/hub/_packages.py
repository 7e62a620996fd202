"""Packages uploaded to the hub: a client anywhere deploys a package that is only on its own disk.

The client sends the signed package directory as one uncompressed tar (the model inside is
already as small as it gets). The hub bounds the upload while it streams, unpacks only plain
files with plain names into a fresh folder, checks every file against the manifest, and only
then moves the folder into ``DATA_DIR/packages/<package id>``: a half-received or tampered
upload leaves nothing behind. The devices still verify the signature themselves; the hub's check
catches a broken transfer before a rollout starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from workbench.errors import ConfigError, PackageError, SignatureError
from workbench.protocol.package import MANIFEST, SIGNATURE, load_package, verify_files

# A package is a model and a manifest; 2 GiB covers models with external data well past what an edge device runs.
MAX_UPLOAD_BYTES = 2 * 1024**3
MAX_MEMBERS = 1000
MEDIA_TYPE = "application/x-tar"


def pack(directory: str | os.PathLike[str]) -> bytes:
    """A package directory as the tar the hub accepts (plain files, names relative to it).

    Example:
        >>> len(pack("out/digits")) > 0   # doctest: +SKIP
        True
    """
    folder = Path(directory)
    if not (folder / MANIFEST).is_file():
        raise PackageError(f"{folder} is not a package (no {MANIFEST}); build one with `workbench package`")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return buffer.getvalue()


async def receive(chunks: AsyncIterator[bytes], data_dir: Path, *, limit: int = MAX_UPLOAD_BYTES) -> Path:
    """Store an uploaded package under ``data_dir/packages``; return its folder there.

    Raises :class:`ConfigError` for an upload that is too large, not a tar, or holds anything but
    plain files, and :class:`PackageError` for one whose files do not match its manifest.
    """
    root = data_dir / "packages"
    root.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=root))
    try:
        archive = incoming / "upload.tar"
        size = 0
        with archive.open("wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    bound = f"{limit // 1024**2} MiB" if limit >= 1024**2 else f"{limit} bytes"
                    raise ConfigError(f"a package upload is at most {bound}; this one is larger")
                out.write(chunk)
        # Unpacking and hashing up to the limit would stall every other request on the API's event loop.
        return await asyncio.to_thread(_keep, archive, incoming / "package", root)
    finally:
        shutil.rmtree(incoming, ignore_errors=True)


def _keep(archive: Path, unpacked: Path, root: Path) -> Path:
    _unpack(archive, unpacked)
    try:
        package = load_package(unpacked)
        verify_files(package)
    except (PackageError, SignatureError) as exc:
        raise PackageError(f"the uploaded package does not hold together: {exc}") from None
    # The manifest's hash names the content; the signature's, who vouched for it (re-signed, it is another).
    signature = unpacked / SIGNATURE
    signed_by = hashlib.sha256(signature.read_bytes()).hexdigest()[:12] if signature.is_file() else "unsigned"
    final = root / f"{package.id[:32]}-{signed_by}"
    if not final.exists():
        os.replace(unpacked, final)
    return final


def _unpack(archive: Path, into: Path) -> None:
    try:
        with tarfile.open(archive, mode="r:") as tar:
            members: list[tarfile.TarInfo] = []
            for member in tar:
                if len(members) >= MAX_MEMBERS:
                    raise ConfigError(f"a package upload holds at most {MAX_MEMBERS} files")
                name = member.name
                if not member.isfile() or name.startswith("/") or ".." in Path(name).parts or not name:
                    raise ConfigError(f"a package upload holds only plain files with relative names; "
                                      f"{name[:100]!r} is not one")
                members.append(member)
            into.mkdir()
            # The "data" filter refuses links, devices and names outside ``into`` a second time.
            tar.extractall(into, members=members, filter="data")
    except tarfile.TarError as exc:
        raise ConfigError(f"a package upload must be a tar of the package folder ({exc})") from None
