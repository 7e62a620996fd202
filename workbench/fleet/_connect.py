"""`workbench.connect()`: a Fleet for a URL, or for the local fleet `workbench up` started."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError, FleetNotRunningError
from workbench.fleet._fleet import Fleet
from workbench.protocol._bus import Bus
from workbench.protocol._mqtt import BrokerAddress


def connect(
    url: str | None = None,
    *,
    username: str | None = None,
    password: str | None = None,
    ca_file: str | os.PathLike[str] | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    timeout: float = 10.0,
    keepalive: int = 10,
    token: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    broker: str | None = None,
) -> Fleet:
    """Connect to a fleet through its hub, or through its MQTT broker alone.

    With no ``url``, connect to the local fleet that ``workbench up`` started in
    ``run_dir`` (default ``$WORKBENCH_RUN_DIR`` or ``~/.workbench/fleet``), with its
    credentials and CA when it is secure (the default). An ``http(s)://`` URL is a hub's: the
    fleet's history, rollouts and stores come from it (``token=``), and devices are reached
    through the broker the hub names (or ``broker=``, as this machine reaches it), with
    ``username``/``password``/``ca_file`` for that broker.

    Raises :class:`~workbench.errors.BrokerUnreachableError` or
    :class:`~workbench.errors.AuthenticationError` naming the URL within ``timeout``.

    Example:
        >>> fleet = workbench.connect()                                          # doctest: +SKIP
        >>> fleet = workbench.connect("mqtt://gateway.local:1883", username="me", password="...")  # doctest: +SKIP
        >>> fleet = workbench.connect("https://hub.example:8443", token="...")   # doctest: +SKIP
    """
    if url is None:
        from workbench.sim._rundir import RunDir

        rd = RunDir.resolve(run_dir)
        record = rd.read()
        if record is None:
            raise FleetNotRunningError(
                f"no local fleet is running in {rd.path}: start one with `workbench up`, "
                "or pass the broker URL, e.g. workbench.connect('mqtt://host:1883')"
            )
        return connect_record(record, rd, timeout=timeout, keepalive=keepalive)
    ca = str(ca_file) if ca_file is not None else None
    if url.startswith(("http://", "https://")):
        from workbench.hub import HubClient

        hub = HubClient(url, token=token, token_file=token_file, verify=ca if ca is not None else True)
        try:
            named = broker or hub.fleet_info().get("broker")
            if not named:
                raise ConfigError(f"the hub at {hub.url} has no broker (it was started without --broker); pass "
                                  "broker='mqtt://host:1883' to reach the devices")
            fleet = Fleet(BrokerAddress.parse(named, username=username, password=password, ca_file=ca),
                          timeout=timeout, keepalive=keepalive)
        except BaseException:
            hub.close()
            raise
        fleet.attach_hub(hub)
        return fleet
    address = BrokerAddress.parse(url, username=username, password=password, ca_file=ca)
    return Fleet(address, timeout=timeout, keepalive=keepalive)


def connect_record(record: dict[str, Any], rd: Any, *, timeout: float = 10.0, keepalive: int = 10,
                   bus: Bus | None = None) -> Fleet:
    """A Fleet for a local fleet's record (fleet.json), using its workbench credentials if secure.

    With ``bus``, the fleet uses that connection (its owner's, e.g. the hub's) instead of opening one.
    """
    secure = record.get("secure") or {}
    controller = secure.get("controller") or {}
    password = None
    if controller.get("password_file"):
        password = Path(controller["password_file"]).read_text().strip()
    address = BrokerAddress.parse(
        record["broker"]["url"],
        username=controller.get("username"),
        password=password,
        ca_file=secure.get("ca_file"),
    )
    fleet = Fleet(address, timeout=timeout, keepalive=keepalive, bus=bus)
    fleet.local_record = record  # deployments find the fleet's artifact server here
    return fleet
