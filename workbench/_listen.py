"""Where a service listens: loopback unless asked, and never in clear text beyond it.

A listener on 127.0.0.1 is reachable only from this machine; anything else (an interface
address, a hostname, ``0.0.0.0``) is reachable from the network, where credentials and
tokens sent in clear text can be read by anyone on the path.

Example:
    >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0")
    (True, True, False)
"""

from __future__ import annotations

import ipaddress
import socket

import psutil

from workbench.errors import ConfigError

LOOPBACK = "127.0.0.1"
WILDCARDS = ("0.0.0.0", "::", "")


def is_loopback(host: str) -> bool:
    """True only for an address or name that is this machine's loopback (``127.0.0.0/8``, ``::1``, ``localhost``).

    Example:
        >>> is_loopback("::1"), is_loopback("192.0.2.7"), is_loopback("gateway.local")
        (True, False, False)
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname may resolve anywhere: it counts as the network


def connect_host(host: str) -> str:
    """The address a client on this machine uses to reach a listener bound to ``host``.

    Example:
        >>> connect_host("0.0.0.0"), connect_host("192.0.2.7")
        ('127.0.0.1', '192.0.2.7')
    """
    return LOOPBACK if host in WILDCARDS else host


def certificate_names(host: str) -> list[str]:
    """The names and addresses a server certificate for a listener on ``host`` must carry.

    Loopback always (local clients connect there); the host itself; for a wildcard bind, this
    machine's hostname and every address of its interfaces, since clients may use any of them.

    Example:
        >>> certificate_names("192.0.2.7")
        ['localhost', '127.0.0.1', '192.0.2.7']
    """
    names = ["localhost", LOOPBACK]
    if host in WILDCARDS:
        names += [socket.gethostname(), socket.getfqdn()]
        names += [address.address for addresses in psutil.net_if_addrs().values() for address in addresses
                  if address.family in (socket.AF_INET, socket.AF_INET6) and "%" not in address.address]
    elif host:
        names.append(host)
    return list(dict.fromkeys(name for name in names if name))


def require_tls_beyond_loopback(host: str, *, tls: bool, what: str, fix: str) -> None:
    """Raise :class:`ConfigError` when ``what`` would listen beyond loopback without TLS.

    Example:
        >>> require_tls_beyond_loopback("0.0.0.0", tls=False, what="the hub",
        ...                             fix="pass --certfile and --keyfile")   # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        workbench.errors.ConfigError: the hub would listen on 0.0.0.0, beyond this machine, without TLS: ...
    """
    if not tls and not is_loopback(host):
        raise ConfigError(
            f"{what} would listen on {host or '0.0.0.0'}, beyond this machine, without TLS: credentials and tokens "
            f"would cross the network in clear text. {fix}, or listen on {LOOPBACK}")
