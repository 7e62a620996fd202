"""The fleet hub: one persistent service that receives, stores and serves what a fleet sends.

``workbench hub`` (and ``workbench up``, for the local fleet) runs it; :class:`HubClient` queries it. See
docs/architecture.md for where it sits.

Example:
    >>> from workbench.hub import HubClient
    >>> hub = HubClient.for_record(record)              # doctest: +SKIP
    >>> hub.query("latency_p95_ms", since="1h")         # doctest: +SKIP
"""

from workbench.hub._client import HubClient, ensure_token, read_token
from workbench.hub._store_url import StoreURL

__all__ = ["Hub", "HubClient", "StoreURL", "ensure_token", "make_app", "read_token", "serve"]


def __getattr__(name: str) -> object:
    # The service side needs DuckDB, Starlette and uvicorn; a client needs none of them.
    if name == "Hub":
        from workbench.hub._service import Hub

        return Hub
    if name in ("make_app", "serve"):
        from workbench.hub import _api

        return getattr(_api, name)
    raise AttributeError(f"module 'workbench.hub' has no attribute {name!r}")
