"""Signed, content-addressed model packages: a directory with a manifest and a detached signature.

A package directory holds ``model.onnx``, ``manifest.json`` (sha256 and size of every file,
the model's input/output spec, target profile, recipe, metrics, requirements and the
health check: a sample input and its expected output) and ``signature.json`` (an Ed25519
signature over the exact bytes of ``manifest.json``). Because the manifest names the hash
of every file, the one signature covers the whole package; the package's id is the
manifest's sha256.

A directory written by the optimizer (``result.save(dir)``: model.onnx + manifest.json) is
accepted as it is: :func:`sign_package` keeps its fields and adds the ones deployment needs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import PackageError, SignatureError
from workbench.protocol.artifacts import sha256_file
from workbench.protocol.keys import SigningKey, load_signing_key
from workbench.protocol.sequence import manifest_sequence, next_sequence

FORMAT = "wb-package/1"
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
MODEL = "model.onnx"
SAMPLE_INPUT = "sample_input.npz"
EXPECTED_OUTPUT = "expected_output.npz"
# A manifest lists a handful of files and metadata (a few KiB); the limits are checked before parsing,
# since both files arrive from the network and are parsed before the signature can be checked.
MAX_MANIFEST_BYTES = 1024 * 1024
MAX_SIGNATURE_BYTES = 64 * 1024
# Used when neither the caller nor the optimizer's manifest gives a latency SLO; a deliberate, loose default.
DEFAULT_SLO_MS = 1000.0

_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class Package:
    """A package directory whose manifest was parsed (and, from :func:`verify_package`, verified).

    Example:
        >>> pkg = verify_package("out/digits-int8", trusted)   # doctest: +SKIP
        >>> pkg.name, pkg.id[:12]                              # doctest: +SKIP
    """

    path: Path
    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: dict[str, Any]

    @property
    def id(self) -> str:
        """The package's content address: the sha256 of its manifest."""
        return hashlib.sha256(self.manifest_bytes).hexdigest()

    @property
    def name(self) -> str:
        return str(self.manifest.get("name") or self.path.name)

    @property
    def version(self) -> str:
        return str(self.manifest.get("version") or self.id[:12])

    @property
    def sequence(self) -> int:
        """The signed, monotonic sequence number anti-rollback compares (0 for a package signed without one)."""
        return manifest_sequence(self.manifest)

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest.get("files") or {})

    @property
    def model_file(self) -> Path:
        return self.path / str(self.manifest.get("model") or MODEL)

    @property
    def health(self) -> dict[str, Any]:
        return dict(self.manifest.get("health") or {})

    @property
    def tolerance(self) -> tuple[float, float]:
        """``(atol, rtol)`` within which a model's outputs count as the packaged ones."""
        health = self.health
        return float(health.get("atol", 1e-4)), float(health.get("rtol", 1e-3))

    @property
    def size(self) -> int:
        """Bytes of every file plus manifest and signature: what a device downloads."""
        return sum(int(f["size"]) for f in self.files.values()) + len(self.manifest_bytes) + \
            (self.path / SIGNATURE).stat().st_size

    def sample(self) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
        """The health check's sample input feeds and expected outputs."""
        health = self.health
        with np.load(self.path / health.get("sample_input", SAMPLE_INPUT)) as data:
            feeds = {key: data[key] for key in data.files}
        with np.load(self.path / health.get("expected_output", EXPECTED_OUTPUT)) as data:
            outputs = [data[f"out{i}"] for i in range(len(data.files))]
        return feeds, outputs

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "package_id": self.id,
                "model_sha256": self.files.get(self.manifest.get("model") or MODEL, {}).get("sha256")}


def _safe_name(name: str) -> bool:
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts and name not in (MANIFEST, SIGNATURE)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _sample_feeds(session: Any, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in session.get_inputs():
        shape = [dim if isinstance(dim, int) and dim > 0 else 1 for dim in spec.shape]
        dtype = _DTYPES.get(spec.type)
        if dtype is None:
            raise PackageError(f"input {spec.name!r} has type {spec.type}, which the health check cannot sample; "
                               "pass sample_input= with real data")
        if np.issubdtype(dtype, np.floating):
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[spec.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            feeds[spec.name] = rng.integers(0, 10, shape).astype(dtype)
    return feeds


def _opset(model: Path) -> int | None:
    try:
        import onnx
    except ImportError:  # the spec is informative only; preflight skips the opset check without it
        return None
    proto = onnx.load(str(model), load_external_data=False)
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)


def sign_package(
    directory: str | os.PathLike[str],
    key: SigningKey | None = None,
    *,
    name: str | None = None,
    version: str | None = None,
    target: str | None = None,
    slo_ms: float | None = None,
    sample_input: dict[str, np.ndarray] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> Package:
    """Complete and sign a package directory in place; return it verified.

    Keeps every field an existing ``manifest.json`` has (recipe, metrics, target from the
    optimizer), adds the health check (computing the expected output with ONNX Runtime on
    this machine), the input/output spec, requirements and every file's sha256, writes the
    manifest atomically and then the detached signature.

    Example:
        >>> sign_package("out/digits-int8")          # doctest: +SKIP
    """
    import onnxruntime as ort

    folder = Path(directory)
    manifest: dict[str, Any] = {}
    if (folder / MANIFEST).exists():
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except ValueError as exc:
            raise PackageError(f"{folder / MANIFEST} is not valid JSON ({exc}); fix or delete it") from None
        if not isinstance(manifest, dict):
            raise PackageError(f"{folder / MANIFEST} must hold a JSON object")
    model_name = str(manifest.get("model") or MODEL)
    if not isinstance(manifest.get("model"), str | None):
        model_name = MODEL
    model = folder / model_name
    if not model.is_file():
        raise PackageError(f"{folder} has no {model_name}; put the ONNX model there or use "
                           "`workbench package MODEL.onnx --out DIR`")
    key = key or load_signing_key()
    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises untyped errors
        raise PackageError(f"ONNX Runtime cannot load {model}: {exc}; package a valid ONNX model") from None
    feeds = sample_input if sample_input is not None else _sample_feeds(session)
    start = time.perf_counter()
    outputs = session.run(None, feeds)
    host_ms = (time.perf_counter() - start) * 1000
    health = dict(manifest.get("health") or {})
    slo = slo_ms if slo_ms is not None else health.get("slo_ms") or (manifest.get("metrics") or {}).get("slo_ms")
    buffer = _npz_bytes({k: np.asarray(v) for k, v in feeds.items()})
    _atomic_write(folder / SAMPLE_INPUT, buffer)
    _atomic_write(folder / EXPECTED_OUTPUT, _npz_bytes({f"out{i}": np.asarray(o) for i, o in enumerate(outputs)}))
    health.update({"sample_input": SAMPLE_INPUT, "expected_output": EXPECTED_OUTPUT, "atol": atol, "rtol": rtol,
                   "slo_ms": float(slo) if slo is not None else DEFAULT_SLO_MS,
                   "slo_source": "given" if slo is not None else "default",
                   "signing_host_latency_ms": round(host_ms, 3)})
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in (MANIFEST, SIGNATURE) or path.name.startswith("."):
            continue
        files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    model_size = files[model_name]["size"]
    manifest.update({
        "format": FORMAT,
        "name": name or manifest.get("name") or folder.name,
        "version": version or manifest.get("version") or files[model_name]["sha256"][:12],
        "model": model_name,
        "target": target if target is not None else manifest.get("target"),
        "inputs": [{"name": i.name, "shape": list(i.shape), "type": i.type} for i in session.get_inputs()],
        "outputs": [{"name": o.name, "shape": list(o.shape), "type": o.type} for o in session.get_outputs()],
        "health": health,
        "files": files,
        "requirements": {
            "opset": _opset(model),
            "execution_providers": ["CPUExecutionProvider"],
            "disk_bytes": sum(f["size"] for f in files.values()),
            # An estimate: a session's resident size is roughly its weights plus as much again in buffers.
            "memory_mb_estimate": round(2 * model_size / 2**20, 3),
        },
        "signed_at": time.time(),
        "key_id": key.key_id,
        # Signed with the rest: a device refuses a package older than one it installed (anti-rollback).
        "sequence": next_sequence(key.directory),
    })
    manifest.setdefault("recipe", None)
    manifest.setdefault("metrics", None)
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    signature = {"algorithm": "ed25519", "key_id": key.key_id,
                 "signature": base64.b64encode(key.sign(manifest_bytes)).decode()}
    # The old signature goes first: a crash in between leaves an unsigned package, never a wrongly signed one.
    (folder / SIGNATURE).unlink(missing_ok=True)
    _atomic_write(folder / MANIFEST, manifest_bytes)
    _atomic_write(folder / SIGNATURE, json.dumps(signature, indent=2).encode())
    return verify_package(folder, {key.key_id: key.private_key.public_key()})


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def build_package(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    key: SigningKey | None = None,
    **options: Any,
) -> Package:
    """Wrap any ONNX model into a signed package directory ``out`` (what `workbench package` does).

    ``out`` is written next to itself first and renamed into place, so it never exists half-made.

    Example:
        >>> build_package("digits.onnx", "out/digits", name="digits", slo_ms=20)   # doctest: +SKIP
    """
    source = Path(model)
    if not source.is_file():
        raise PackageError(f"no ONNX model at {source}; pass the path of a .onnx file")
    target = Path(out)
    if target.exists() and any(target.iterdir()):
        raise PackageError(f"{target} exists and is not empty; choose a new --out directory or delete it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.staging{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        shutil.copyfile(source, staging / MODEL)
        options["name"] = options.get("name") or source.stem
        sign_package(staging, key, **options)
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_package(target)


def load_package(directory: str | os.PathLike[str]) -> Package:
    """Parse a package's manifest and signature without checking them (see :func:`verify_package`).

    Example:
        >>> load_package("out/digits").name     # doctest: +SKIP
        'digits'
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise PackageError(f"no package directory at {folder}; build one with `workbench package MODEL.onnx --out DIR`")
    try:
        manifest_size = (folder / MANIFEST).stat().st_size
        if manifest_size > MAX_MANIFEST_BYTES:
            raise PackageError(f"{folder / MANIFEST} is {manifest_size} bytes, over the {MAX_MANIFEST_BYTES}-byte "
                               "limit for a manifest; it is not one workbench made")
        manifest_bytes = (folder / MANIFEST).read_bytes()
    except OSError:
        raise PackageError(f"{folder} has no {MANIFEST}; it is not a model package") from None
    try:
        manifest = json.loads(manifest_bytes)
    except RecursionError:
        raise PackageError(f"{folder / MANIFEST} nests too deep to be a manifest; rebuild the package") from None
    except ValueError as exc:
        raise PackageError(f"{folder / MANIFEST} is not valid JSON ({str(exc)[:200]}); rebuild the package") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise PackageError(f"{folder / MANIFEST} lists no files; sign the package with `workbench package` first")
    signature: dict[str, Any] = {}
    try:
        if (folder / SIGNATURE).stat().st_size > MAX_SIGNATURE_BYTES:
            signature = {"malformed": True}
        else:
            signature = json.loads((folder / SIGNATURE).read_bytes())
    except FileNotFoundError:
        pass
    except (ValueError, RecursionError):
        signature = {"malformed": True}
    return Package(folder, manifest, manifest_bytes, signature if isinstance(signature, dict) else {})


def verify_signature(package: Package, trusted_keys: dict[str, Any]) -> None:
    """Raise :class:`SignatureError` unless a trusted key signed the package's manifest bytes."""
    from cryptography.exceptions import InvalidSignature

    sig = package.signature
    if not sig:
        raise SignatureError(f"package {package.path} is not signed ({SIGNATURE} missing); sign it with "
                             "`workbench package` or workbench.deploy.sign_package()")
    kid = sig.get("key_id")
    key = trusted_keys.get(str(kid))
    if key is None:
        raise SignatureError(f"package {package.path} is signed by key {kid!r}, which is not trusted here "
                             f"(trusted: {', '.join(sorted(trusted_keys)) or 'none'}); enroll the signer's public "
                             "key in the device's trusted_keys directory")
    try:
        key.verify(base64.b64decode(str(sig.get("signature", "")), validate=True), package.manifest_bytes)
    except (InvalidSignature, ValueError):
        raise SignatureError(f"package {package.path}: the signature does not match the manifest (it was changed "
                             "after signing); rebuild and re-sign the package") from None


def verify_files(package: Package) -> None:
    """Raise :class:`PackageError` unless every file the manifest lists is present with its size and sha256."""
    files = package.files
    model = str(package.manifest.get("model") or MODEL)
    if model not in files:
        raise PackageError(f"package {package.path}: the manifest does not list its model {model!r}; re-sign it")
    for name, entry in files.items():
        if not _safe_name(name) or not isinstance(entry, dict):
            raise PackageError(f"package {package.path}: the manifest lists an invalid file entry {name!r}")
        path = package.path / name
        if not path.is_file():
            raise PackageError(f"package {package.path}: file {name!r} listed in the manifest is missing; "
                               "the package is incomplete, copy or build it again")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise PackageError(f"package {package.path}: {name!r} is {size} bytes, the manifest says "
                               f"{entry.get('size')} (truncated or replaced); rebuild the package")
        if sha256_file(path) != entry.get("sha256"):
            raise PackageError(f"package {package.path}: {name!r} does not match its sha256 in the manifest "
                               "(the file was modified); rebuild the package")


def verify_package(directory: str | os.PathLike[str], trusted_keys: dict[str, Any]) -> Package:
    """Load a package and check its signature against ``trusted_keys`` and every file against the manifest.

    Example:
        >>> from workbench.deploy import load_trusted_keys
        >>> verify_package("out/digits", load_trusted_keys("~/.workbench/keys"))   # doctest: +SKIP
    """
    package = load_package(directory)
    verify_signature(package, trusted_keys)
    verify_files(package)
    return package
