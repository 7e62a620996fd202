"""A secure local fleet (`workbench up`'s default): a generated CA and server certificate, per-device credentials
and broker ACLs.

Each device gets its own password; it may publish only under ``wb/v1/dev/{device}/`` and read
only its own prefix, its commands (``wb/v1/cmd/{device}/``) and its desired state
(``wb/v1/desired/{device}/``). Only the ``workbench`` user may send commands or write desired
state, and with that acknowledgements (``wb/v1/desired/{device}/ack``). The same rules are written
for Mosquitto (password file + ACL file) and for the NATS server (users with subject permissions,
MQTT connections only). ``workbench up --insecure`` skips all of this.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench._files import write_private
from workbench._listen import LOOPBACK, certificate_names
from workbench.errors import ConfigError
from workbench.protocol import topics
from workbench.sim._rundir import RunDir

CONTROLLER_USER = "workbench"
# The embedded broker's one NATS-protocol user: hub replicas, reading every device's outbox, nothing else.
HUB_NATS_USER = "workbench-hub"
HUB_NATS_SUBSCRIBE = ("wb.v1.dev.*.outbox",)
# Mosquitto's own "$7$" hash: PBKDF2-HMAC-SHA512, 101 rounds and a 12-byte salt are what mosquitto_passwd writes.
_MOSQUITTO_ITERATIONS = 101
_MOSQUITTO_SALT_BYTES = 12
_CERT_DAYS = 365


@dataclass(frozen=True)
class Acl:
    """The MQTT topic filters one user may publish to and subscribe to.

    Example:
        >>> device_acl("sim-01").publish
        ('wb/v1/dev/sim-01/#',)
    """

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def device_acl(device_id: str) -> Acl:
    """What device ``device_id`` may do: write its own prefix, read its prefix, commands and desired state.

    Example:
        >>> device_acl("sim-01").subscribe
        ('wb/v1/dev/sim-01/#', 'wb/v1/cmd/sim-01/#', 'wb/v1/desired/sim-01/#')
    """
    own = f"{topics.DEVICE_PREFIX}/{device_id}/#"
    return Acl(publish=(own,), subscribe=(own, f"{topics.COMMAND_PREFIX}/{device_id}/#",
                                          f"{topics.DESIRED_PREFIX}/{device_id}/#"))


def controller_acl() -> Acl:
    """What the workbench may do: send commands, write desired state, read every device.

    It also reads desired state back, so it can see what it asked for after a restart.

    Example:
        >>> controller_acl().publish
        ('wb/v1/cmd/#', 'wb/v1/desired/#')
    """
    return Acl(publish=(f"{topics.COMMAND_PREFIX}/#", f"{topics.DESIRED_PREFIX}/#"),
               subscribe=(f"{topics.DEVICE_PREFIX}/#", f"{topics.DESIRED_PREFIX}/#"))


@dataclass(frozen=True)
class SecureMaterial:
    """What ``prepare_secure`` generated: the record for fleet.json, broker config fragments, agent arguments.

    Example:
        >>> material = prepare_secure(RunDir(Path("/tmp/wb")), "embedded", ["sim-01"])   # doctest: +SKIP
        >>> material.agent_args("sim-01")[0]                                            # doctest: +SKIP
        '--password-file'
    """

    record: dict[str, Any]
    broker_config: dict[str, str]
    ca_file: Path
    credentials_dir: Path

    def password_file(self, device_id: str) -> Path:
        """The file holding ``device_id``'s broker password (its username is the device id)."""
        return self.credentials_dir / f"{device_id}.password"

    def agent_args(self, device_id: str) -> list[str]:
        """``workbench agent`` arguments for a process that runs the one device ``device_id``.

        Example:
            >>> material.agent_args("sim-01")[2:]   # doctest: +SKIP
            ['--ca-file', '/tmp/wb/secrets/ca.pem']
        """
        return ["--password-file", str(self.password_file(device_id)), "--ca-file", str(self.ca_file)]

    def agent_args_many(self) -> list[str]:
        """``workbench agent`` arguments for a process that runs several devices (``DIR/<id>.password``).

        Example:
            >>> material.agent_args_many()[0]   # doctest: +SKIP
            '--credentials-dir'
        """
        return ["--credentials-dir", str(self.credentials_dir), "--ca-file", str(self.ca_file)]


def check_secure_broker(broker: str) -> None:
    """Raise :class:`ConfigError` unless ``broker`` is one ``workbench up`` starts, and so can secure.

    Example:
        >>> check_secure_broker("mosquitto")
    """
    if broker not in ("embedded", "mosquitto"):
        raise ConfigError(
            f"a secure fleet (the default) needs a broker `workbench up` starts (embedded or mosquitto), not "
            f"{broker!r}: `workbench up` cannot give devices credentials and ACLs on it. Provision them on that "
            "broker yourself, start agents with --username/--password-file/--ca-file and connect with "
            "workbench.connect(url, username=..., ...); or pass --insecure (secure=False) to start agents "
            "without credentials on it"
        )


def prepare_secure(rd: RunDir, broker: str, device_ids: list[str], *, host: str = LOOPBACK) -> SecureMaterial:
    """Generate a CA, a server certificate, passwords and ACLs for a local fleet on ``broker``.

    ``broker`` is ``"embedded"`` (the NATS server) or ``"mosquitto"``; an external broker URL
    raises :class:`ConfigError`, because only the brokers ``workbench up`` starts can be configured.
    The certificate names loopback and the address the broker listens on (``host``; for
    ``0.0.0.0``, this machine's hostname and interface addresses).
    Every secret is written with mode 0600 under ``rd.secrets`` (itself 0700).

    Example:
        >>> material = prepare_secure(RunDir(Path("/tmp/wb")), "mosquitto", ["sim-01", "sim-02"])   # doctest: +SKIP
        >>> material.record["controller"]["username"]                                               # doctest: +SKIP
        'workbench'
    """
    check_secure_broker(broker)
    for device_id in device_ids:
        topics.check_device_id(device_id)
        if device_id in (CONTROLLER_USER, HUB_NATS_USER):
            raise ConfigError(f"device id {device_id!r} is one of the workbench's own broker users in a secure fleet; "
                              "pick another device id")
    secrets_dir = rd.secrets
    credentials_dir = secrets_dir / "devices"
    for directory in (secrets_dir, credentials_dir):
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)

    ca_file, cert_file, key_file = _write_certificates(secrets_dir, certificate_names(host))
    passwords = {device_id: secrets.token_urlsafe(24) for device_id in device_ids}
    for device_id, password in passwords.items():
        write_private(credentials_dir / f"{device_id}.password", password + "\n")
    controller_password = secrets.token_urlsafe(24)
    controller_file = secrets_dir / f"{CONTROLLER_USER}.password"
    write_private(controller_file, controller_password + "\n")
    users = {CONTROLLER_USER: (controller_password, controller_acl())}
    users |= {device_id: (password, device_acl(device_id)) for device_id, password in passwords.items()}

    hub_nats: dict[str, str] = {}
    if broker == "embedded":
        # Hub replicas share the outboxes through a NATS queue group, on the NATS port (loopback): their own user.
        hub_password = secrets.token_urlsafe(24)
        hub_file = secrets_dir / f"{HUB_NATS_USER}.password"
        write_private(hub_file, hub_password + "\n")
        hub_nats = {"username": HUB_NATS_USER, "password_file": str(hub_file)}
        auth_file = secrets_dir / "nats-auth.conf"
        write_private(auth_file, nats_authorization(users, hub_password=hub_password))
        # The auth block lives in its own 0600 file: nats.conf itself is written world-readable.
        # NATS resolves an include relative to the including file, even an absolute-looking one.
        include = os.path.relpath(auth_file, rd.broker_dir)
        broker_config = {"auth": f'include "{include}"\n', "tls": _nats_tls(cert_file, key_file)}
    else:
        password_file, acl_file = secrets_dir / "mosquitto.passwd", secrets_dir / "mosquitto.acl"
        write_private(password_file, "".join(mosquitto_password_line(u, p) for u, (p, _) in users.items()))
        write_private(acl_file, mosquitto_acl({user: acl for user, (_, acl) in users.items()}))
        broker_config = {
            "auth": f"allow_anonymous false\npassword_file {password_file}\nacl_file {acl_file}\n",
            "tls": f"cafile {ca_file}\ncertfile {cert_file}\nkeyfile {key_file}\ntls_version tlsv1.2\n",
        }
    record = {
        "ca_file": str(ca_file),
        "controller": {"username": CONTROLLER_USER, "password_file": str(controller_file)},
        "credentials_dir": str(credentials_dir),
        **({"hub_nats": hub_nats} if hub_nats else {}),
        "acl": {
            CONTROLLER_USER: _acl_record(controller_acl()),
            "device": _acl_record(device_acl("{device}")),
        },
    }
    return SecureMaterial(record=record, broker_config=broker_config, ca_file=ca_file,
                          credentials_dir=credentials_dir)


def _acl_record(acl: Acl) -> dict[str, list[str]]:
    return {"publish": list(acl.publish), "subscribe": list(acl.subscribe)}


# -- TLS ---------------------------------------------------------------------------------------


def _write_certificates(secrets_dir: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A fresh CA and a server certificate for ``names`` (hostnames or addresses); returns (ca.pem, server.pem,
    server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    # Backdated a little so a clock a minute behind does not reject a certificate made just now.
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=_CERT_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Edge Workbench local CA {secrets.token_hex(4)}")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(server_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([_general_name(name) for name in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    paths = secrets_dir / "ca.pem", secrets_dir / "server.pem", secrets_dir / "server.key"
    write_private(secrets_dir / "ca.key", key_pem(ca_key))
    write_private(paths[0], ca_cert.public_bytes(serialization.Encoding.PEM))
    write_private(paths[1], server_cert.public_bytes(serialization.Encoding.PEM))
    write_private(paths[2], key_pem(server_key))
    return paths


def _general_name(name: str) -> Any:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _nats_tls(cert_file: Path, key_file: Path) -> str:
    return f'  tls {{\n    cert_file: "{cert_file}"\n    key_file: "{key_file}"\n    timeout: 5\n  }}\n'


# -- Mosquitto -----------------------------------------------------------------------------------


def mosquitto_password_line(username: str, password: str, *, salt: bytes | None = None) -> str:
    """One ``password_file`` line in Mosquitto 2's ``$7$`` format (what ``mosquitto_passwd -b`` writes).

    Example:
        >>> mosquitto_password_line("alice", "s3cret", salt=bytes(12))[:30]
        'alice:$7$101$AAAAAAAAAAAAAAAA$'
    """
    salt = salt if salt is not None else os.urandom(_MOSQUITTO_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _MOSQUITTO_ITERATIONS)
    encoded = "$".join((base64.b64encode(salt).decode(), base64.b64encode(digest).decode()))
    return f"{username}:$7${_MOSQUITTO_ITERATIONS}${encoded}\n"


def mosquitto_acl(users: dict[str, Acl]) -> str:
    """A Mosquitto ``acl_file``: each user's topics; anything not listed is denied.

    Example:
        >>> print(mosquitto_acl({"sim-01": device_acl("sim-01")}).splitlines()[1])
        topic readwrite wb/v1/dev/sim-01/#
    """
    lines: list[str] = []
    for user, acl in users.items():
        lines.append(f"user {user}")
        both = [t for t in acl.publish if t in acl.subscribe]
        lines += [f"topic readwrite {t}" for t in both]
        lines += [f"topic write {t}" for t in acl.publish if t not in both]
        lines += [f"topic read {t}" for t in acl.subscribe if t not in both]
        lines.append("")
    return "\n".join(lines)


# -- NATS ----------------------------------------------------------------------------------------


def nats_subjects(topic_filter: str) -> list[str]:
    """The NATS subjects an MQTT topic filter covers, as the NATS server's MQTT layer maps them.

    ``/`` becomes ``.``, ``.`` inside a level becomes ``//``, ``+`` is ``*`` and ``#`` is ``>``;
    ``a/#`` also matches ``a`` itself in MQTT, so it yields both ``a`` and ``a.>``.

    Example:
        >>> nats_subjects("wb/v1/dev/pi.4/#")
        ['wb.v1.dev.pi//4', 'wb.v1.dev.pi//4.>']
    """
    levels = ["*" if level == "+" else ">" if level == "#" else level.replace(".", "//")
              for level in topic_filter.split("/")]
    if levels[-1] == ">":
        return [".".join(levels[:-1]), ".".join(levels)]
    return [".".join(levels)]


def _subjects(filters: Iterable[str]) -> list[str]:
    return [subject for topic_filter in filters for subject in nats_subjects(topic_filter)]


def _quoted(values: list[str]) -> str:
    return "[" + ", ".join(f'"{value}"' for value in values) + "]"


def nats_authorization(users: dict[str, tuple[str, Acl]], *, hub_password: str | None = None) -> str:
    """A NATS ``authorization`` block: one MQTT-only user per device plus the workbench, with permissions.

    ``hub_password`` adds :data:`HUB_NATS_USER`, the one user of the NATS protocol port: hub replicas
    subscribe every outbox (a queue group) and publish nothing (their acknowledgements go over MQTT).

    Passwords are plain text here: the file is 0600 inside the run directory, and the ``bcrypt``
    package is not a dependency. Subjects not allowed are denied, and a user with permissions can
    not reach the NATS port (``allowed_connection_types``). The server's internal ``$MQTT.``
    subjects for QoS 1 delivery and retained messages need no grant on nats-server 2.12+, where they
    are implicit for MQTT clients; granting them would let a device read other sessions' deliveries.

    Example:
        >>> "wb.v1.cmd.>" in nats_authorization({"workbench": ("pw", controller_acl())})
        True
    """
    entries = []
    for user, (password, acl) in users.items():
        entries.append(
            "    {\n"
            f'      user: "{user}"\n'
            f'      password: "{password}"\n'
            '      allowed_connection_types: ["MQTT"]\n'
            "      permissions: {\n"
            f"        publish: {{ allow: {_quoted(_subjects(acl.publish))} }}\n"
            f"        subscribe: {{ allow: {_quoted(_subjects(acl.subscribe))} }}\n"
            "      }\n"
            "    }\n"
        )
    if hub_password is not None:
        entries.append(
            "    {\n"
            f'      user: "{HUB_NATS_USER}"\n'
            f'      password: "{hub_password}"\n'
            '      allowed_connection_types: ["STANDARD"]\n'
            "      permissions: {\n"
            '        publish: { deny: [">"] }\n'
            f"        subscribe: {{ allow: {_quoted(list(HUB_NATS_SUBSCRIBE))} }}\n"
            "      }\n"
            "    }\n"
        )
    return "# Written by `workbench up`, secure.\nauthorization {\n  users = [\n" + "".join(entries) + "  ]\n}\n"
