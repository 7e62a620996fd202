"""The MQTT connection both sides share: URL parsing, TLS, TCP_NODELAY, clear errors."""

from __future__ import annotations

import logging
import random
import re
import socket
import ssl
import threading
import time
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

log = logging.getLogger("workbench.mqtt")


@dataclass(frozen=True)
class BrokerAddress:
    """Where and how to reach a broker: one node, or the nodes of a cluster in the order to try them.

    ``others`` are the further nodes of a cluster (host, port), reached with the same TLS and
    credentials: a client connects to the first node and fails over to the next when its node is lost.

    Example:
        >>> BrokerAddress.parse("mqtt://user:pw@gateway.local:1884").port
        1884
        >>> [n.port for n in BrokerAddress.parse("mqtt://10.0.0.1:1883,10.0.0.2:1884").nodes]
        [1883, 1884]
    """

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    others: tuple[tuple[str, int], ...] = ()

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
    ) -> BrokerAddress:
        """Parse ``mqtt://[user[:password]@]host[:port]`` (or ``mqtts://`` for TLS).

        A cluster is a comma-separated list, ``mqtts://user:pw@host1:port1,host2:port2,...`` (each
        item may also be a whole URL of the same scheme): the nodes share the first item's scheme
        and credentials, and are tried in that order.
        """
        first, *rest = url.split(",")
        address = cls._parse_one(first.strip(), username=username, password=password, ca_file=ca_file)
        scheme = "mqtts" if address.tls else "mqtt"
        others = []
        for item in (r.strip() for r in rest):
            if not item:
                raise ConfigError(f"broker URL list {_safe(url)!r} has an empty item; separate nodes by single commas")
            node = cls._parse_one(item if "://" in item else f"{scheme}://{item}", ca_file=ca_file)
            if node.tls != address.tls or node.username is not None:
                raise ConfigError(f"broker node {node.url} in {_safe(url)!r} differs from the first node in TLS or "
                                  "credentials; the nodes of one cluster share them: give them once, on the first")
            others.append((node.host, node.port))
        nodes = [(address.host, address.port), *others]
        if len(set(nodes)) != len(nodes):
            raise ConfigError(f"broker URL list {_safe(url)!r} names a node twice; name each node once")
        return replace(address, others=tuple(others))

    @classmethod
    def _parse_one(cls, url: str, *, username: str | None = None, password: str | None = None,
                   ca_file: str | None = None) -> BrokerAddress:
        if "://" not in url:
            url = f"mqtt://{url}"
        parts = urlsplit(url)
        if parts.scheme not in _SCHEMES:
            raise ConfigError(f"unsupported broker URL scheme in {_safe(url)!r}: use mqtt:// or mqtts://")
        if not parts.hostname:
            raise ConfigError(f"broker URL {_safe(url)!r} has no host name")
        tls = _SCHEMES[parts.scheme]
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError(f"broker URL {_safe(url)!r} has an invalid port") from None
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
        """The URL (a comma-separated list for a cluster) without credentials, safe to print."""
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://" + ",".join(f"{host}:{port}" for host, port in self._pairs())

    @property
    def nodes(self) -> tuple[BrokerAddress, ...]:
        """Each node as an address of its own, in the order a client tries them."""
        return tuple(replace(self, host=host, port=port, others=()) for host, port in self._pairs())

    def preferring(self, index: int) -> BrokerAddress:
        """The same nodes, starting at node ``index`` (modulo their number): how devices spread over a cluster.

        Example:
            >>> BrokerAddress.parse("mqtt://a:1,b:2,c:3").preferring(4).url
            'mqtt://b:2,c:3,a:1'
        """
        pairs = self._pairs()
        start = index % len(pairs)
        rotated = pairs[start:] + pairs[:start]
        return replace(self, host=rotated[0][0], port=rotated[0][1], others=tuple(rotated[1:]))

    def after(self, host: str, port: int) -> BrokerAddress:
        """The node to try when the one at ``host:port`` is lost: the next in the list (the first if unknown).

        Example:
            >>> BrokerAddress.parse("mqtt://a:1,b:2,c:3").after("c", 3).url
            'mqtt://a:1'
        """
        pairs = self._pairs()
        try:
            following = pairs[(pairs.index((host, port)) + 1) % len(pairs)]
        except ValueError:
            following = pairs[0]
        return replace(self, host=following[0], port=following[1], others=())

    def with_credentials(self, username: str | None, password: str | None) -> BrokerAddress:
        return replace(self, username=username, password=password)

    def _pairs(self) -> list[tuple[str, int]]:
        return [(self.host, self.port), *self.others]


def _safe(url: str) -> str:
    """``url`` with any password replaced, for error messages."""
    return re.sub(r"(?<=[/,])([^:/@,\s]+):[^@/]*@", r"\1:***@", url)


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
        _close_failed_handshakes(client)

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
    fail_over(client, address)
    return client


def _close_failed_handshakes(client: mqtt.Client) -> None:
    # paho 2.2 leaves the TLS socket of a failed handshake (a node that accepts TCP but never answers TLS: stuck in
    # an election, overloaded) to the garbage collector, one leaked descriptor per attempt. Its own steps, but closed.
    # The context checks the host name itself (PROTOCOL_TLS_CLIENT), so paho's extra match_hostname is not needed.
    context = client._ssl_context
    if context is None or not context.check_hostname:
        return

    def wrap(tcp_sock: socket.socket) -> ssl.SSLSocket:
        tls_sock = context.wrap_socket(tcp_sock, server_hostname=client._host, do_handshake_on_connect=False)
        try:
            tls_sock.settimeout(client._connect_timeout)
            tls_sock.do_handshake()
        except BaseException:
            tls_sock.close()
            raise
        return tls_sock

    client._ssl_wrap_socket = wrap  # type: ignore[method-assign]


def fail_over(client: mqtt.Client, address: BrokerAddress) -> None:
    """Send each of ``client``'s reconnects to the next node of ``address`` (a cluster); no-op for one node.

    The first connect goes to ``address``'s first node. A reconnect follows a lost connection or a
    failed attempt, and either may mean that node is gone: trying the next one (round robin) reaches a
    surviving node within one backoff step per dead node, and the cluster holds the session state.

    Example:
        >>> client = make_client(BrokerAddress.parse("mqtt://127.0.0.1:1883,127.0.0.1:1884"), "x")
        >>> client.on_pre_connect is not None
        True
    """
    if not address.others:
        return
    last: tuple[str, int] | None = None

    def on_pre_connect(c: mqtt.Client, _userdata: Any) -> None:
        # paho calls this before every connect. A connect() that named a node (connect_blocking trying
        # them in turn) changed host or port: go there. The same node again is the loop's reconnect: move on.
        nonlocal last
        if (c.host, c.port) == last:
            node = address.after(c.host, c.port)
            log.info("%s: trying broker node %s:%d after %s:%d", c._client_id.decode(errors="replace"),
                     node.host, node.port, c.host, c.port)
            # paho's reconnect reads these next. Its public setters refuse while the state is "connecting", which
            # it already is here, though the old socket is closed and the new one not yet made.
            c._host, c._port = node.host, node.port
        last = (c.host, c.port)

    client.on_pre_connect = on_pre_connect


# After a broker restart every client of a fleet reconnects: paho's fixed backoff (1 s, 2 s, 4 s...) would send
# them all at the same instants. Each wait gets up to this many seconds more, at random.
RECONNECT_JITTER_S = 2.0


def jitter_reconnects(client: mqtt.Client, spread: float = RECONNECT_JITTER_S) -> None:
    """Spread ``client``'s reconnects: paho's exponential backoff plus a random 0..``spread`` s each time.

    Example:
        >>> jitter_reconnects(make_client(BrokerAddress.parse("localhost"), "sim-01-x"))
    """
    backoff = client._reconnect_wait  # paho 2.x: called by its network thread before each reconnect

    def wait() -> None:
        until = time.monotonic() + random.uniform(0.0, spread)
        # Sliced, so that loop_stop() (the client stopping) is not held up by the extra wait.
        while not client._thread_terminate and time.monotonic() < until:
            time.sleep(min(0.25, max(until - time.monotonic(), 0.0)))
        backoff()

    client._reconnect_wait = wait  # type: ignore[method-assign]


# A refused subscription is tried again after this many seconds, at random: long enough for a JetStream
# leader election (what refuses them on a NATS cluster that just lost a node), spread so a fleet does not retry at once.
RESUBSCRIBE_AFTER_S = (2.0, 6.0)


def refused_filters(reason_codes: list[Any]) -> int:
    """How many filters of a SUBACK the broker refused (0x80): NATS does when it cannot make a JetStream consumer.

    Example:
        >>> refused_filters([1, 0x80])
        1
    """
    return sum(1 for code in reason_codes
               if getattr(code, "is_failure", False) or (isinstance(code, int) and code >= 0x80))


def subscribe_again_later(client: mqtt.Client, subscriptions: Callable[[], list[tuple[str, int]]], *,
                          attempt: int = 1) -> None:
    """Subscribe ``subscriptions()`` again after a jittered pause, unless ``client`` is not connected by then.

    For a SUBACK that refused a filter: the connection stays up and nothing else would subscribe again
    (a reconnect does, in ``on_connect``). Subscribing again to granted filters only replaces them.
    ``attempt`` (refusals in a row) doubles the pause each time, up to 32 times: a lasting refusal
    (a consumer limit) is then asked about every few minutes, not hammered.

    Example:
        >>> subscribe_again_later(client, lambda: [("wb/v1/cmd/sim-01/+", 1)], attempt=1)   # doctest: +SKIP
    """
    def again() -> None:
        if client.is_connected():
            wanted = subscriptions()
            if wanted:
                client.subscribe(wanted)

    timer = threading.Timer(random.uniform(*RESUBSCRIBE_AFTER_S) * 2 ** min(max(attempt, 1) - 1, 5), again)
    timer.daemon = True
    timer.start()


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
    within ``timeout`` seconds. For a cluster, a node that refuses the TCP connection is skipped
    for the next; the error names every node when none answers.

    Example:
        >>> connect_blocking(client, address, keepalive=10, timeout=10.0)   # doctest: +SKIP
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
    failures = []
    for node in address.nodes:
        try:
            client.connect(node.host, node.port, keepalive=keepalive)
            break
        except (OSError, ssl.SSLError) as exc:
            failures.append(f"{node.url}: {exc}")
    else:
        client.on_connect = previous
        raise BrokerUnreachableError(
            f"cannot reach the MQTT broker at {'; '.join(failures)}. "
            "Check that the broker is running (workbench up starts a local one) and the URL is right."
        )
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
