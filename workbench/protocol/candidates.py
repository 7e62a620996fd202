"""Signed candidate lists: what a device's ``benchmark`` command downloads and times.

A benchmark runs models on the device, so, like a deployment, it takes only what the
workbench signed (issue 12, row 7): a manifest listing each candidate's sha256 and size,
with a detached Ed25519 signature in the same form as a package's, both stored in the
fleet's artifact store next to the candidates. The device downloads the manifest and the
signature (size-capped), verifies the signature against its trusted keys, then downloads each
candidate with the size and hash the signed manifest gives. The manifest's ``format`` is not
a package's, so a device never installs one.
"""

from __future__ import annotations

import base64
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from workbench.protocol.artifacts import ArtifactStore
from workbench.protocol.keys import SigningKey

CANDIDATES_FORMAT = "wb-benchmark/1"


def sign_candidates(files: dict[str, dict[str, Any]], store: ArtifactStore, key: SigningKey) -> dict[str, Any]:
    """Sign a manifest of ``files`` (name -> sha256 and size, already in ``store``); return the command's argument.

    Example:
        >>> sign_candidates({"fp32": {"sha256": sha, "size": 1234}}, store, key)["base_url"]   # doctest: +SKIP
        'http://127.0.0.1:8765'
    """
    manifest = {"format": CANDIDATES_FORMAT, "files": files, "key_id": key.key_id, "signed_at": time.time()}
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    signature = json.dumps({"algorithm": "ed25519", "key_id": key.key_id,
                            "signature": base64.b64encode(key.sign(manifest_bytes)).decode()}).encode()
    with tempfile.TemporaryDirectory(prefix="wb-candidates-") as folder:
        (Path(folder) / "manifest.json").write_bytes(manifest_bytes)
        (Path(folder) / "signature.json").write_bytes(signature)
        manifest_sha = store.add(Path(folder) / "manifest.json")
        signature_sha = store.add(Path(folder) / "signature.json")
    return {"manifest_sha256": manifest_sha, "manifest_size": len(manifest_bytes),
            "signature_sha256": signature_sha, "signature_size": len(signature), "base_url": store.base_url}


def stage_candidates(paths: dict[str, Path], store: ArtifactStore, key: SigningKey) -> dict[str, Any]:
    """Put each candidate model into ``store`` and sign the list; return the ``benchmark`` command's ``candidates``.

    Example:
        >>> stage_candidates({"fp32": Path("fp32.onnx")}, store, load_signing_key())["base_url"]  # doctest: +SKIP
        'http://127.0.0.1:8765'
    """
    files = {name: {"sha256": store.add(path), "size": Path(path).stat().st_size} for name, path in paths.items()}
    return sign_candidates(files, store, key)
