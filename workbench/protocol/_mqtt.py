"""The MQTT connection both sides share: URL parsing, TLS, TCP_NODELAY, clear errors."""

from __future__ import annotations

import socket
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from workbench.errors import AuthenticationError, BrokerUnreachableError, ConfigError

_SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True, "tls": True}
# MQTT 3.1.1 CONNACK 4/5, and the MQTT 5 codes paho maps them to.
_AUTH_FAILURES = {4, 5, 134, 135}


@dataclass(frozen=True)
class BrokerAddress:
    """Where and how to reach a broker.

    Example:
        >>> BrokerAddress.parse("mqtt://user:pw@gateway.local:1884").port
        1884
    """

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
    ) -> BrokerAddress:
        """Parse ``mqtt://[user[:password]@]host[:port]`` (or ``mqtts://`` for TLS)."""
        if "://" not in url:
            url = f"mqtt://{url}"
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ConfigError(f"unsupported broker URL scheme in {url!r}: use mqtt:// or mqtts://")
        if not parts.hostname:
            raise ConfigError(f"broker URL {url!r} has no host name")
        tls = _SCHEMES[parts.scheme]
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError(f"broker URL {url!r} has an invalid port") from None
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls or ca_file is not None,
            username=username if username is not None else (unquote(parts.username) if parts.username else None),
            password=password if password is not None else (unquote(parts.password) if parts.password else None),
            ca_file=ca_file,
        )

    @property
    def url(self) -> str:
        """The URL without credentials, safe to print."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def with_credentials(self, username: str | None, password: str | None) -> BrokerAddress:
        return replace(self, username=username, password=password)


def new_client_id(prefix: str) -> str:
    """A client id unique to this connection: brokers drop the older of two equal ids."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def make_client(address: BrokerAddress, client_id: str) -> mqtt.Client:
    """A paho client for MQTT 3.1.1 with TCP_NODELAY, TLS and credentials set."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    if address.username is not None:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set(ca_certs=address.ca_file, cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)

    def on_socket_open(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        # paho never sets TCP_NODELAY: small QoS 0 messages then wait ~10 ms for Nagle.
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # TLS wrappers on some Pythons, or a non-TCP transport

    client.on_socket_open = on_socket_open
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    # A callback that raises must not end the network thread (the guards below catch first; this is the backstop).
    client.suppress_exceptions = True
    return client


MessageCallback = Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]


def guard_messages(
    callback: MessageCallback, on_error: Callable[[mqtt.MQTTMessage, Exception], None]
) -> MessageCallback:
    """Wrap an ``on_message`` callback so that whatever it raises goes to ``on_error``, not up paho's thread.

    An exception escaping ``on_message`` ends paho's network thread: the process stays up,
    deaf, while the broker may still show it connected. ``on_error`` counts and logs; if it
    raises too, that is swallowed here.

    Example:
        >>> client.on_message = guard_messages(self._on_message, self._on_message_error)   # doctest: +SKIP
    """

    def guarded(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            callback(client, userdata, message)
        except Exception as exc:
            try:
                on_error(message, exc)
            except Exception:  # the network thread must survive a failing error handler too
                pass

    return guarded


def network_alive(client: mqtt.Client) -> bool:
    """True while paho's network thread (started by ``loop_start``) is running.

    Example:
        >>> network_alive(make_client(BrokerAddress.parse("localhost"), "x"))
        False
    """
    thread = getattr(client, "_thread", None)  # paho 2.x; None once loop_forever returned or raised
    return thread is not None and thread.is_alive()


def restart_network(client: mqtt.Client) -> None:
    """Start paho's network thread again after it died: the connection is dropped and made anew.

    ``on_connect`` then subscribes and announces again, exactly as after a broker restart.
    """
    client._thread = None  # a dead thread's reference, if its finally did not clear it
    client._reset_sockets()  # the half-read socket of the dead loop, and its wake-up pair
    client.loop_start()


def close_client(client: mqtt.Client) -> None:
    """Disconnect, stop the network thread and close paho's wake-up socket pair now.

    Clients whose callbacks are bound methods sit in a reference cycle; left to the garbage
    collector, paho's socket pair may be finalized before the client closes it (a
    ResourceWarning, an error under our test settings).
    """
    client.disconnect()
    client.loop_stop()
    client._reset_sockets()  # paho 2.x; its own __del__ does the same, too late
    client.on_message = client.on_connect = client.on_disconnect = None


def is_auth_failure(reason_code: Any) -> bool:
    """True for a CONNACK that refused the credentials."""
    return int(getattr(reason_code, "value", reason_code)) in _AUTH_FAILURES


def connect_blocking(
    client: mqtt.Client, address: BrokerAddress, *, keepalive: int, timeout: float,
    start: Callable[[mqtt.Client], object] = mqtt.Client.loop_start,
) -> None:
    """Connect, start the network thread (``start``: paho's own by default) and wait for the CONNACK.

    Raises :class:`BrokerUnreachableError` or :class:`AuthenticationError` naming the URL
    within ``timeout`` seconds.
    """
    connected = threading.Event()
    outcome: dict[str, Any] = {}
    previous: Any = client.on_connect

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        outcome["rc"] = reason_code
        connected.set()
        if previous is not None:
            previous(c, userdata, flags, reason_code, properties)

    client.on_connect = on_connect
    client.connect_timeout = timeout
    try:
        client.connect(address.host, address.port, keepalive=keepalive)
    except (OSError, ssl.SSLError) as exc:
        raise BrokerUnreachableError(
            f"cannot reach the MQTT broker at {address.url}: {exc}. "
            "Check that the broker is running (workbench up starts a local one) and the URL is right."
        ) from None
    start(client)
    try:
        if not connected.wait(timeout):
            raise BrokerUnreachableError(
                f"the MQTT broker at {address.url} accepted the TCP connection but sent no CONNACK "
                f"within {timeout:g} s; is it an MQTT listener (not NATS or HTTP), or one that needs mqtts:// (TLS)?"
            )
        rc = outcome["rc"]
        if is_auth_failure(rc):
            raise AuthenticationError(
                f"the MQTT broker at {address.url} refused the credentials for user "
                f"{address.username!r} ({rc}); check the username and password"
            )
        if getattr(rc, "is_failure", False):
            raise BrokerUnreachableError(f"the MQTT broker at {address.url} refused the connection: {rc}")
    except BaseException:
        close_client(client)
        raise
    client.on_connect = previous
