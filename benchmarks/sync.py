"""Sync benchmark: backlog drain, bytes on the wire vs plain JSON, and link utilisation on lte and satellite.

Runs the real sync parts in one process: a SQLite outbox on disk, the sender with
its codec and adaptive batching, the link shaper, and the receiver handing the
telemetry batches to the telemetry ingestor, which inserts them into DuckDB on disk
(the store ``fleet.telemetry.query`` reads) and acknowledges each batch once its
insert has committed (the MQTT broker is left out: it would add the same hop to both
sides of every ratio). Points are real telemetry batches
(``workbench.protocol.wire``) of synthetic sensor-like readings: 10 metrics, a
random walk each, at 10 ms steps.

- drain: ``--points`` (default one million) queued while offline, then the link set
  to lan; points/s and time until the outbox is empty and everything is stored.
- bytes on the wire (compressed messages + topic) relative to the same points as
  plain JSON ``[{"device", "ts", "metric", "value"}, ...]`` (goal: at most 15 %).
- utilisation: with a backlog, wire bytes sent per second / the link's bandwidth,
  over ``--window`` seconds on lte and on satellite (goal: at least 80 %).

Usage: python benchmarks/sync.py [--points 1000000] [--window 20]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from workbench.agent import LinkShaper, Outbox, Sender
from workbench.protocol.acks import decode_ack
from workbench.protocol.wire import encode_batch
from workbench.sync import Codec, link_profile
from workbench.sync._receiver import SyncReceiver
from workbench.sync._store import SyncStore
from workbench.telemetry._ingest import Ingestor
from workbench.telemetry._store import DuckDBStore

NAMES = [f"sensor_{i}" for i in range(10)]
TOPIC_BYTES = len("wb/v1/dev/sim-01/outbox") + 4


def make_batches(points: int, per_batch: int = 1000, seed: int = 0) -> list[tuple[bytes, int]]:
    """Telemetry batches and each one's plain-JSON size."""
    rng = np.random.default_rng(seed)
    level = np.full(len(NAMES), 20.0)
    start = 1.7e9
    batches = []
    for seq, first in enumerate(range(0, points, per_batch)):
        n = min(per_batch, points - first)
        index = (np.arange(first, first + n) % len(NAMES)).astype(np.uint16)
        steps = np.round(rng.normal(scale=0.05, size=n), 3)
        values = np.empty(n)
        for i in range(n):  # a random walk per metric, 3 decimals, like a real sensor
            level[index[i]] += steps[i]
            values[i] = round(level[index[i]], 3)
        ts = start + (first + np.arange(n)) * 0.01
        raw = encode_batch("sim-01", seq, ts, NAMES, index, values, sent=ts[-1])
        plain = json.dumps([{"device": "sim-01", "ts": float(t), "metric": NAMES[m], "value": float(v)}
                            for t, m, v in zip(ts, index, values, strict=True)], separators=(",", ":"))
        batches.append((raw, len(plain)))
    return batches


class Rig:
    """Outbox -> sender -> shaper -> receiver -> ingestor -> DuckDB, and acks back through the shaper."""

    def __init__(self, directory: Path, link: str) -> None:
        self.outbox = Outbox(directory / "outbox.db", max_bytes=2**31)
        self.shaper = LinkShaper(link_profile(link), seed=1)
        self.store = SyncStore(directory / "store.db", keep_payloads=True)
        self.telemetry = DuckDBStore(directory / "telemetry.duckdb")
        self.ingestor = Ingestor(self.telemetry, retention_every_s=3600)  # the points are from 2023: keep them
        self.receiver = SyncReceiver(None, self.store, telemetry=self.ingestor, send_ack=self._ack)
        self.sender = Sender(self.outbox, Codec(), self.shaper, self._publish, overhead_bytes=TOPIC_BYTES)

    def _publish(self, message: bytes) -> bool:
        self.receiver.feed("sim-01", message)
        return True

    def _ack(self, device: str, payload: bytes) -> None:
        seqs = decode_ack(payload)
        self.shaper.receive(lambda: self.sender.on_ack(seqs))

    def close(self) -> None:
        self.sender.stop()
        self.receiver.close()
        self.ingestor.close()
        self.telemetry.close()
        self.shaper.close()
        self.outbox.close()


def drain(points: int, directory: Path) -> dict[str, float]:
    batches = make_batches(points)
    rig = Rig(directory, "offline")
    for raw, _ in batches:
        rig.outbox.put(raw, priority="normal", kind="telemetry")
    raw_bytes = sum(len(raw) for raw, _ in batches)
    json_bytes = sum(size for _, size in batches)
    rig.sender.start()
    start = time.perf_counter()
    rig.shaper.set_link(link_profile("lan"))
    while rig.outbox.pending():
        time.sleep(0.01)
    rig.receiver.wait_idle(30)
    elapsed = time.perf_counter() - start
    stored = len(rig.telemetry.seen_batches().get("sim-01", ()))
    stored_points = rig.telemetry.count()
    wire = rig.sender.wire_bytes
    rig.close()
    assert stored == len(batches), f"{stored} of {len(batches)} batches stored"
    assert stored_points == points, f"{stored_points} of {points} points stored"
    return {"points": points, "batches": len(batches), "drain_s": elapsed, "points_per_s": points / elapsed,
            "wire_bytes": wire, "binary_bytes": raw_bytes, "json_bytes": json_bytes,
            "wire_vs_json": wire / json_bytes}


def utilisation(link: str, window: float, directory: Path) -> dict[str, float]:
    profile = link_profile(link)
    # Enough raw bytes that, compressed to about a third, a backlog remains all window.
    need = int(profile.bytes_per_s * (window + 4) * 4)
    rig = Rig(directory, link)
    for raw, _ in make_batches(need // 18 + 1000, seed=1):
        rig.outbox.put(raw, priority="normal", kind="telemetry")
    rig.sender.start()
    time.sleep(2.0)  # past the first round trips and the batch-size adaptation
    sent0, at0 = rig.shaper.sent_bytes, time.perf_counter()
    time.sleep(window)
    sent, elapsed = rig.shaper.sent_bytes - sent0, time.perf_counter() - at0
    backlog_left = rig.outbox.pending()
    rig.close()
    return {"link": link, "bandwidth_bps": profile.bandwidth_bps, "wire_bps": sent * 8 / elapsed,
            "utilisation": sent * 8 / elapsed / profile.bandwidth_bps, "backlog_left_items": backlog_left}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--window", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = drain(args.points, Path(tmp) / "drain")
        print(f"drain: {result['points']:,} points in {result['batches']} batches, {result['drain_s']:.2f} s, "
              f"{result['points_per_s']:,.0f} points/s")
        print(f"bytes on the wire: {result['wire_bytes']:,} vs plain JSON {result['json_bytes']:,} "
              f"= {100 * result['wire_vs_json']:.1f} % (binary batches uncompressed: "
              f"{100 * result['binary_bytes'] / result['json_bytes']:.1f} %; goal <= 15 %)")
        for link in ("lte", "satellite"):
            used = utilisation(link, args.window, Path(tmp) / link)
            print(f"{link}: {used['wire_bps'] / 1e6:.3f} of {used['bandwidth_bps'] / 1e6:.3f} Mbit/s = "
                  f"{100 * used['utilisation']:.1f} % of the link (goal >= 80 %), backlog left "
                  f"{used['backlog_left_items']} items")


if __name__ == "__main__":
    main()
