"""A starting agent given bad input, as real processes: unreachable broker, missing TLS files, no data dir."""

from __future__ import annotations

import datetime
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from workbench.agent._startup import EXIT_NO_PERMISSION, DataDirError, check_data_dir, wait_for_files


class AgentProcess:
    """A real `workbench agent` whose stderr is collected line by line."""

    def __init__(self, *args: str, prefix: list[str] | None = None) -> None:
        self.proc = subprocess.Popen([*(prefix or []), sys.executable, "-m", "workbench.cli", "agent", *args],
                                     cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, text=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]

    def wait_line(self, text: str, seconds: float) -> str:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if found := self.matching(text):
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r} within {seconds} s:\n" + "\n".join(self.lines))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=30)
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_ca(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workbench test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _without_dac_override() -> list[str]:
    """Run a child without root's power to ignore file permissions (so a 0555 dir is read-only to it)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv (util-linux): cannot drop CAP_DAC_OVERRIDE for the child")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def test_unreachable_broker_logs_one_line_and_keeps_retrying(tmp_path: Path) -> None:
    port = _closed_port()
    agent = AgentProcess("--device-id", "pi-1", "--broker", f"mqtt://127.0.0.1:{port}",
                         "--data-dir", str(tmp_path / "data"))
    try:
        line = agent.wait_line("cannot reach the MQTT broker", 20)
        assert f"mqtt://127.0.0.1:{port}" in line and "retrying with backoff" in line
        assert "ConnectionRefusedError" in line
        time.sleep(4)  # paho retries after 1, 2, 4 s: at least two more failures, no more lines
        assert agent.proc.poll() is None, "\n".join(agent.lines)
        assert len(agent.matching("cannot reach the MQTT broker")) == 1, "\n".join(agent.lines)
        assert not agent.matching("Traceback")
    finally:
        assert agent.stop() == 0, "\n".join(agent.lines)


def test_missing_ca_file_logs_one_line_retries_then_goes_on_when_it_appears(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    port = _closed_port()
    agent = AgentProcess("--device-id", "pi-1", "--broker", f"mqtts://127.0.0.1:{port}", "--ca-file", str(ca),
                         "--data-dir", str(tmp_path / "data"))
    try:
        line = agent.wait_line(str(ca), 20)
        assert "TLS CA file" in line and "is missing" in line and "retrying with backoff" in line
        time.sleep(3.5)  # retries after 1 and 2 s
        assert agent.proc.poll() is None and len(agent.matching(str(ca))) == 1, "\n".join(agent.lines)
        ca.write_text("not a certificate\n")  # present but unusable: a new problem, one new line
        agent.wait_line("cannot be used", 10)
        _write_ca(ca)
        agent.wait_line("now readable; starting", 20)
        agent.wait_line("cannot reach the MQTT broker", 20)  # the next stage: TLS loaded, broker still down
        assert not agent.matching("Traceback")
    finally:
        assert agent.stop() == 0, "\n".join(agent.lines)


def test_unreadable_password_file_names_the_user_and_mode(tmp_path: Path) -> None:
    secret = tmp_path / "broker.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o000)
    agent = AgentProcess("--device-id", "pi-1", "--broker", f"mqtt://127.0.0.1:{_closed_port()}",
                         "--password-file", str(secret), "--data-dir", str(tmp_path / "data"),
                         prefix=_without_dac_override())
    try:
        line = agent.wait_line(str(secret), 20)
        assert "is not readable by" in line and "----------" in line
        assert agent.proc.poll() is None
    finally:
        assert agent.stop() == 0, "\n".join(agent.lines)


def test_data_dir_it_cannot_write_exits_non_zero_naming_path_and_permission(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)
    agent = AgentProcess("--device-id", "pi-1", "--broker", f"mqtt://127.0.0.1:{_closed_port()}",
                         "--data-dir", str(data), prefix=_without_dac_override())
    code = agent.stop() if agent.proc.wait(timeout=60) is not None else None
    assert code == EXIT_NO_PERMISSION, "\n".join(agent.lines)
    errors = agent.matching("error:")
    assert errors and str(data) in errors[-1] and "lacks write permission" in errors[-1]
    assert "dr-xr-xr-x" in errors[-1]
    assert not agent.matching("Traceback")


def test_data_dir_under_a_parent_it_cannot_write_names_the_parent(tmp_path: Path) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    agent = AgentProcess("--device-id", "pi-1", "--broker", "mqtt://127.0.0.1:1", "--data-dir",
                         str(parent / "workbench"), prefix=_without_dac_override())
    assert agent.proc.wait(timeout=60) == EXIT_NO_PERMISSION
    agent.stop()
    assert any(f"cannot create the data dir {parent / 'workbench'}" in line and f"permission on {parent}" in line
               for line in agent.lines), "\n".join(agent.lines)


def test_check_data_dir_creates_a_missing_dir_and_refuses_a_file(tmp_path: Path) -> None:
    check_data_dir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataDirError, match="file"):
        check_data_dir(tmp_path / "file")


def test_wait_for_files_gives_up_when_stopped(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    assert not wait_for_files([("TLS CA file", tmp_path / "none.pem")], stop)
