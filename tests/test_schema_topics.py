"""The topic namespace and payload schema: pure functions, no broker."""

from __future__ import annotations

import json
import re

import pytest
from conftest import REPO

from workbench.errors import ConfigError, PayloadError
from workbench.protocol import schema, topics
from workbench.protocol._mqtt import BrokerAddress


def test_decode_returns_body_when_payload_is_valid() -> None:
    body = schema.decode(schema.encode({"state": "online", "n": 3}))
    assert body == {"v": schema.SCHEMA_VERSION, "state": "online", "n": 3}


@pytest.mark.parametrize(
    ("payload", "kind"),
    [
        (b"{not json", "malformed"),
        (b"\xff\xfe\x00", "malformed"),
        (b"[1, 2]", "malformed"),
        (json.dumps({"v": 99, "state": "online"}).encode(), "unknown_version"),
        (json.dumps({"state": "online"}).encode(), "unknown_version"),
        (b"{" + b" " * schema.MAX_PAYLOAD_BYTES + b"}", "oversized"),
    ],
)
def test_decode_raises_payload_error_of_kind_when_payload_is_bad(payload: bytes, kind: str) -> None:
    counters = schema.PayloadCounters()
    with pytest.raises(PayloadError) as info:
        schema.decode(payload)
    assert counters.reject(info.value) == kind
    assert counters[kind] == 1


def test_topics_keep_device_and_command_prefixes_apart() -> None:
    assert topics.status_topic("sim-01") == "wb/v1/dev/sim-01/status"
    assert topics.command_topic("sim-01", "ping") == "wb/v1/cmd/sim-01/ping"
    assert topics.parse_device_topic(topics.reply_topic("sim-01", "ctl-9")) == ("sim-01", "reply", "ctl-9")
    assert topics.parse_command_topic("wb/v1/cmd/sim-01/ping") == ("sim-01", "ping")
    with pytest.raises(ValueError, match="not a device topic"):
        topics.parse_device_topic("wb/v1/cmd/sim-01/ping")


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "dev ice", "-lead", "x" * 65, "sim-01\n"])
def test_check_device_id_raises_config_error_when_id_cannot_be_a_topic_level(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid device id"):
        topics.check_device_id(bad)


def test_broker_address_parses_credentials_and_tls_from_url() -> None:
    address = BrokerAddress.parse("mqtts://me:p%40ss@gateway.local")
    assert (address.host, address.port, address.tls) == ("gateway.local", 8883, True)
    assert (address.username, address.password) == ("me", "p@ss")
    assert address.url == "mqtts://gateway.local:8883"  # never prints the password
    assert BrokerAddress.parse("localhost:1884").port == 1884


@pytest.mark.parametrize("url", ["http://host:1883", "mqtt://:1883", "mqtt://host:99999"])
def test_broker_address_raises_config_error_when_url_is_unusable(url: str) -> None:
    with pytest.raises(ConfigError):
        BrokerAddress.parse(url)


def _documented_topics(text: str) -> set[str]:
    return set(re.findall(r"`(wb/v1/[^`\s]+)`", text))


def test_topic_tables_list_every_topic_when_read_by_a_newcomer() -> None:
    # topics.py's docstring table is the list of record; each named topic function must be in it, and the
    # README's table and docs/protocol.md must list exactly those topics (nothing missing, nothing stale).
    listed = {t for t in re.findall(r"``(wb/v1/[^`\s]+)``", topics.__doc__ or "") if not t.endswith("/")}
    made = {topics.status_topic("{device}"), topics.inventory_topic("{device}"), topics.claim_topic("{device}"),
            topics.reply_topic("{device}", "{client}"), topics.command_topic("{device}", "{command}"),
            topics.telemetry_topic("{device}"), topics.outbox_topic("{device}"), topics.sync_ack_topic("{device}"),
            topics.sync_state_topic("{device}")}
    assert made <= listed, f"topic functions missing from topics.py's table: {sorted(made - listed)}"
    readme = _documented_topics((REPO / "README.md").read_text())
    protocol = _documented_topics((REPO / "docs" / "protocol.md").read_text())
    assert readme == listed, f"README.md: missing {sorted(listed - readme)}, unknown {sorted(readme - listed)}"
    assert protocol >= listed, f"docs/protocol.md is missing {sorted(listed - protocol)}"
    assert {t for t in protocol - listed if not t.endswith(("/...", "/+"))} == set(), sorted(protocol - listed)
