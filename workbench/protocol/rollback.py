"""Signed rollback grants: the one way a device accepts returning to an older package.

Anti-rollback (issue 12, row 6) makes a device refuse any package older than the one it
installed. A deliberate rollback (a rollout's gate failed, a hub restart interrupted a
rollout) is the exception, so it must be as hard to forge as a package: the workbench signs
a grant naming the device, the deployment and a fresh sequence number from the same counter
as packages (TUF's rule: a newer statement is the only thing that can change what a client
accepts). A device accepts a grant only if a trusted key signed it, it names this device and
this deployment, and its sequence is above every sequence the device has accepted, so a
grant replayed later, or one issued before the device's newest install, does nothing.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from workbench.errors import SignatureError
from workbench.protocol.keys import SigningKey
from workbench.protocol.sequence import MAX_SEQUENCE, next_sequence

GRANT_FORMAT = "wb-rollback/1"
_FIELDS = {"format": str, "device_id": str, "deployment_id": str, "sequence": int}


def _canonical(body: dict[str, Any]) -> bytes:
    # What is signed is re-derived from the decoded fields, never taken as bytes from the network.
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_rollback(key: SigningKey, *, device_id: str, deployment_id: str) -> dict[str, Any]:
    """A grant letting ``device_id`` roll back in deployment ``deployment_id``, signed with ``key``.

    Example:
        >>> grant = sign_rollback(load_signing_key(), device_id="sim-01", deployment_id="3f9c0a1b")  # doctest: +SKIP
        >>> grant["body"]["format"]                                                                   # doctest: +SKIP
        'wb-rollback/1'
    """
    body = {"format": GRANT_FORMAT, "device_id": device_id, "deployment_id": deployment_id,
            "sequence": next_sequence(key.directory)}
    return {"body": body, "key_id": key.key_id, "signature": base64.b64encode(key.sign(_canonical(body))).decode()}


def verify_rollback(grant: Any, *, device_id: str, deployment_id: str, trusted_keys: dict[str, Any],
                    above: int) -> int:
    """Check a rollback grant from the network; return its sequence or raise :class:`SignatureError` saying why.

    ``above`` is the highest sequence the device has accepted; the grant's must exceed it.

    Example:
        >>> verify_rollback(desired["grant"], device_id="sim-01", deployment_id=desired["deployment_id"],
        ...                 trusted_keys=keys, above=floor)                                  # doctest: +SKIP
    """
    from cryptography.exceptions import InvalidSignature

    refused = "rollback refused: "
    advice = "; a device returns to an older package only on a rollback the workbench signed for it"
    if not isinstance(grant, dict) or not isinstance(grant.get("body"), dict):
        raise SignatureError(f"{refused}the desired state carries no signed grant{advice}")
    body = grant["body"]
    if set(body) != set(_FIELDS) or not all(isinstance(body[k], t) and not isinstance(body[k], bool)
                                            for k, t in _FIELDS.items()):
        raise SignatureError(f"{refused}the grant's fields are malformed{advice}")
    if body["format"] != GRANT_FORMAT or body["device_id"] != device_id or body["deployment_id"] != deployment_id:
        raise SignatureError(f"{refused}the grant is for another device or deployment{advice}")
    key = trusted_keys.get(str(grant.get("key_id")))
    if key is None:
        raise SignatureError(f"{refused}the grant is not signed by a trusted key{advice}")
    try:
        key.verify(base64.b64decode(str(grant.get("signature", "")), validate=True), _canonical(body))
    except (InvalidSignature, ValueError):
        raise SignatureError(f"{refused}the grant's signature does not match{advice}") from None
    sequence = int(body["sequence"])
    if not above < sequence <= MAX_SEQUENCE:
        raise SignatureError(f"{refused}the grant's sequence {sequence} is not above {above}, the newest this "
                             f"device accepted (a replayed or stale grant){advice}")
    return sequence
