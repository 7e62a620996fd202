"""What both sides of the fleet agree on: the agent and the workbench (hub, clients) import this.

It holds the MQTT topics, the versioned JSON payloads, the telemetry wire format, the sync codec
and its acknowledgements, priorities, link profiles and budgets, signed packages and their
verification, artifact transfer, deployment state names, model input specs and the way latency
is timed (so a device and the optimizer measure alike). It imports nothing of ours above it, only
the base modules (``workbench.errors``, ``workbench._settings``, ``workbench._files``); an
import-linter contract in pyproject.toml checks that.

Example:
    >>> from workbench.protocol import schema, topics
    >>> topics.status_topic("pi-01")
    'wb/v1/dev/pi-01/status'
    >>> schema.decode(schema.encode({"ok": True}))["ok"]
    True
"""
