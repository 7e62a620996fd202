"""Ed25519 signing keys: the workbench signs packages, agents trust only enrolled public keys.

Layout of a keys directory (default ``$WORKBENCH_KEYS_DIR`` or ``~/.workbench/keys``)::

    signing.key   private key, PEM (PKCS8), mode 0600
    signing.pub   public key, PEM

An agent's trusted directory (``$WORKBENCH_TRUSTED_KEYS`` or ``DATA_DIR/trusted_keys``) holds
``*.pub`` files; a package signed by any other key is rejected.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench._files import write_private
from workbench._settings import settings
from workbench.errors import ConfigError, SignatureError

PRIVATE_NAME = "signing.key"
PUBLIC_NAME = "signing.pub"


def default_keys_dir() -> Path:
    """``$WORKBENCH_KEYS_DIR``, else ``~/.workbench/keys``.

    Example:
        >>> default_keys_dir().is_absolute() or settings().keys_dir is not None
        True
    """
    return settings().keys_dir or Path.home() / ".workbench" / "keys"


def key_id(public_key: Any) -> str:
    """A short, stable id of an Ed25519 public key: the first 16 hex digits of its raw bytes' sha256."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class SigningKey:
    """A loaded private signing key and its id.

    Example:
        >>> key = load_signing_key()          # doctest: +SKIP
        >>> key.sign(b"manifest")[:4]         # doctest: +SKIP
    """

    private_key: Any
    key_id: str
    directory: Path

    def sign(self, data: bytes) -> bytes:
        return bytes(self.private_key.sign(data))

    @property
    def public_file(self) -> Path:
        return self.directory / PUBLIC_NAME


def init_keys(directory: str | os.PathLike[str] | None = None, *, force: bool = False) -> SigningKey:
    """Create an Ed25519 keypair in ``directory``; refuse to overwrite one unless ``force``.

    Example:
        >>> key = init_keys("/tmp/wb-keys-doc", force=True)
        >>> len(key.key_id)
        16
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder = Path(directory).expanduser() if directory is not None else default_keys_dir()
    if (folder / PRIVATE_NAME).exists() and not force:
        raise ConfigError(f"a signing key already exists in {folder}; keep using it, or pass --force to replace "
                          "it (devices enrolled with the old public key will then reject new packages)")
    folder.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    write_private(folder / PRIVATE_NAME, private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    tmp = folder / (PUBLIC_NAME + ".tmp")
    tmp.write_bytes(public)
    os.replace(tmp, folder / PUBLIC_NAME)
    return SigningKey(private, key_id(private.public_key()), folder)


def load_signing_key(directory: str | os.PathLike[str] | None = None, *, create: bool = False) -> SigningKey:
    """Load the private key from ``directory`` (creating a keypair there if ``create`` and none exists).

    Example:
        >>> load_signing_key("~/.workbench/keys").key_id     # doctest: +SKIP
        '3f9c0a1b2c3d4e5f'
    """
    from cryptography.hazmat.primitives import serialization

    folder = Path(directory).expanduser() if directory is not None else default_keys_dir()
    path = folder / PRIVATE_NAME
    if not path.exists():
        if create:
            return init_keys(folder)
        raise ConfigError(f"no signing key in {folder}; create one with `workbench keys init --dir {folder}`")
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not a PEM Ed25519 private key ({exc}); recreate it with "
                          "`workbench keys init --force`") from None
    return SigningKey(private, key_id(private.public_key()), folder)


def load_public_key(path: str | os.PathLike[str]) -> Any:
    """Load one PEM Ed25519 public key file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise SignatureError(f"cannot read public key {path}: {exc}; replace it with a PEM Ed25519 key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path} is not an Ed25519 public key; enroll the key `workbench keys init` wrote")
    return key


def load_trusted_keys(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """Every ``*.pub`` in ``directory`` as ``{key_id: public_key}`` (empty when the folder is missing).

    Example:
        >>> load_trusted_keys("/nonexistent")
        {}
    """
    folder = Path(directory)
    if not folder.is_dir():
        return {}
    keys = {}
    for path in sorted(folder.glob("*.pub")):
        key = load_public_key(path)
        keys[key_id(key)] = key
    return keys


def enroll(public_file: str | os.PathLike[str], trusted_dir: str | os.PathLike[str]) -> Path:
    """Copy a public key into a device's trusted-keys directory (named by its key id).

    Example:
        >>> enroll(init_keys("/tmp/wb-keys-doc3", force=True).public_file, "/tmp/wb-trust-doc").suffix
        '.pub'
    """
    key = load_public_key(public_file)
    folder = Path(trusted_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{key_id(key)}.pub"
    tmp = folder / f".{target.name}.tmp"
    shutil.copyfile(public_file, tmp)
    os.replace(tmp, target)
    return target


def enroll_local_fleet(data_dir: str | os.PathLike[str], device_ids: list[str],
                       keys_dir: str | os.PathLike[str] | None = None) -> str:
    """Trust the workbench's public key on every device of a local fleet; create the keypair if needed.

    Called by `workbench up`. Returns the key id.

    Example:
        >>> enroll_local_fleet("/tmp/wb-fleet/data", ["sim-01"], "/tmp/wb-keys-doc")   # doctest: +SKIP
    """
    key = load_signing_key(keys_dir, create=True)
    for device_id in device_ids:
        enroll(key.public_file, Path(data_dir) / device_id / "trusted_keys")
    return key.key_id
