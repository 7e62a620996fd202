"""A/B model slots on the device's disk, switched by an fsync'd atomic symlink swap.

Layout under ``DATA_DIR/deploy``::

    slots/a/   a package (manifest.json, signature.json, model.onnx, samples)
    slots/b/   the other one: where the next package is downloaded
    staging/   a new package's manifest and signature, until the signature verifies
    current -> slots/a    the package the device serves (absent: the --model it started with)
    previous -> slots/b   what a rollback returns to
    anti_rollback.json    the sequence of the newest package installed, and the highest sequence accepted

A new package is only ever written into the slot ``current`` does not point to, and only
once its manifest's signature has verified in ``staging`` (so a bogus deployment cannot wipe
the package a rollback would return to), and
``current`` changes by renaming a new symlink over it (then fsync of the directory), so a
crash at any moment leaves ``current`` pointing at the old or the new complete package.
At boot the agent verifies the package ``current`` names before it serves it.

Anti-rollback: a package whose signed sequence is below the newest one installed is refused
(checked in staging, before a slot is touched); only a signed rollback grant lowers that floor,
and a grant counts only if its sequence is above every sequence accepted before.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from workbench.errors import PackageError
from workbench.protocol.package import MANIFEST, SIGNATURE, Package, verify_package

log = logging.getLogger("workbench.agent")

SLOTS = ("a", "b")
_MARKER = ".package_id"
_ANTI_ROLLBACK = "anti_rollback.json"


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SlotStore:
    """The two slots of one device and the links saying which one serves.

    Example:
        >>> store = SlotStore(Path("/tmp/wb-dev/deploy"))     # doctest: +SKIP
        >>> slot = store.inactive(); store.prepare(slot, package_id)   # doctest: +SKIP
        >>> store.commit(slot)                                 # doctest: +SKIP
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for name in SLOTS:
            (self.root / "slots" / name).mkdir(parents=True, exist_ok=True)

    def slot_dir(self, slot: str) -> Path:
        if slot not in SLOTS:
            raise ValueError(f"unknown slot {slot!r}")
        return self.root / "slots" / slot

    def _read_link(self, name: str) -> str | None:
        try:
            target = os.readlink(self.root / name)
        except OSError:
            return None
        slot = Path(target).name
        return slot if slot in SLOTS else None

    def current(self) -> str | None:
        """The slot that serves, or None when the device serves the model it started with."""
        return self._read_link("current")

    def previous(self) -> str | None:
        """The slot a rollback returns to (None: back to the model the device started with)."""
        previous = self._read_link("previous")
        return previous if previous != self.current() else None

    def inactive(self) -> str:
        """The slot a new package goes into: never the one that serves."""
        return "b" if self.current() == "a" else "a"

    def package_id(self, slot: str) -> str | None:
        try:
            return (self.slot_dir(slot) / _MARKER).read_text().strip() or None
        except OSError:
            return None

    def prepare(self, slot: str, package_id: str) -> Path:
        """Make ``slot`` ready to receive ``package_id``; keep its files if it already holds that package.

        Keeping them is what lets an interrupted download resume (and a re-deploy skip it).
        """
        if slot == self.current():
            raise PackageError(f"slot {slot} serves the active model; a new package must go to the other slot")
        folder = self.slot_dir(slot)
        if self.package_id(slot) != package_id:
            if self._read_link("previous") == slot:
                self._set_link("previous", None)  # its package is about to be overwritten
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            marker = folder / (_MARKER + ".tmp")
            marker.write_text(package_id)
            os.replace(marker, folder / _MARKER)
            fsync_dir(folder)
        return folder

    def staging(self, package_id: str) -> Path:
        """The folder outside both slots where ``package_id``'s manifest and signature wait to be verified.

        Example:
            >>> store.staging(package_id) / "manifest.json"   # doctest: +SKIP
        """
        folder = self.root / "staging"
        marker = folder / _MARKER
        try:
            held = marker.read_text().strip()
        except OSError:
            held = None
        if held != package_id:  # another package's leftovers: staging is scratch space, nothing serves from it
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            marker.write_text(package_id)
        return folder

    def adopt(self, slot: str, package_id: str, staged: Path) -> Path:
        """Prepare ``slot`` for ``package_id`` and move its verified manifest and signature there from ``staged``."""
        folder = self.prepare(slot, package_id)
        for name in (MANIFEST, SIGNATURE):
            os.replace(staged / name, folder / name)
        fsync_dir(folder)
        return folder

    # -- anti-rollback ----------------------------------------------------------------------------------

    def _accepted(self) -> dict[str, int]:
        try:
            record = json.loads((self.root / _ANTI_ROLLBACK).read_text())
            return {key: int(record[key]) for key in ("floor", "newest")}
        except FileNotFoundError:
            return {"floor": 0, "newest": 0}
        except (OSError, ValueError, TypeError, KeyError):
            # Written by rename only, so this is tampering or a failing disk: refuse every package rather than
            # forget the floor (a forgotten floor would let a replayed old package in).
            log.error("%s is unreadable; refusing every package until it is fixed", self.root / _ANTI_ROLLBACK)
            return {"floor": 2**63, "newest": 2**63}

    def _write_accepted(self, floor: int, newest: int) -> None:
        path = self.root / _ANTI_ROLLBACK
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w") as handle:
            json.dump({"floor": floor, "newest": newest}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(self.root)

    def floor(self) -> int:
        """The sequence of the newest package this device installed: older ones are refused."""
        return self._accepted()["floor"]

    def newest(self) -> int:
        """The highest sequence this device accepted (packages and rollback grants): a grant must exceed it."""
        return self._accepted()["newest"]

    def accept_install(self, sequence: int) -> None:
        """Record that a package of ``sequence`` is being activated (before the switch: a crash errs safe)."""
        accepted = self._accepted()
        self._write_accepted(max(accepted["floor"], sequence), max(accepted["newest"], sequence))

    def consume_grant(self, grant: int) -> None:
        """Record a verified rollback grant's sequence, so that the grant can never count again."""
        accepted = self._accepted()
        self._write_accepted(accepted["floor"], max(accepted["newest"], grant))

    def lower_floor(self, serving: int) -> None:
        """After a granted rollback: packages from ``serving`` (the one now served) on are accepted again."""
        self._write_accepted(serving, self._accepted()["newest"])

    def _set_link(self, name: str, slot: str | None) -> None:
        link = self.root / name
        if slot is None:
            link.unlink(missing_ok=True)
        else:
            tmp = self.root / f".{name}.tmp"
            tmp.unlink(missing_ok=True)
            os.symlink(Path("slots") / slot, tmp)
            os.replace(tmp, link)
        fsync_dir(self.root)

    def commit(self, slot: str) -> str | None:
        """Serve ``slot`` from now on (also after a restart); return the slot it replaces."""
        old = self.current()
        if old == slot:
            return old
        for path in self.slot_dir(slot).iterdir():
            if path.is_file():
                # The swap is only durable if the files it points at are.
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
        fsync_dir(self.slot_dir(slot))
        self._set_link("previous", old)
        self._set_link("current", slot)
        return old

    def revert(self) -> str | None:
        """Point ``current`` back at the previous slot (or at none); return the slot now current."""
        target = self.previous()
        old = self.current()
        self._set_link("previous", old)
        self._set_link("current", target)
        return target

    def boot(self, trusted_keys: dict[str, Any]) -> tuple[str | None, Package | None, str | None]:
        """The verified package to serve after a (re)start: ``(slot, package, problem)``.

        The current slot if it verifies; else the previous one if that does (and it is made
        current); else none, and the device serves the model it started with. ``problem``
        says why the current slot was not used.
        """
        current = self.current()
        if current is None:
            return None, None, None
        try:
            return current, verify_package(self.slot_dir(current), trusted_keys), None
        except PackageError as exc:
            problem = f"slot {current} failed verification at boot: {exc}"
            log.error(problem)
        fallback = self._read_link("previous")
        if fallback is not None and fallback != current:
            try:
                package = verify_package(self.slot_dir(fallback), trusted_keys)
            except PackageError:
                pass
            else:
                self._set_link("previous", None)
                self._set_link("current", fallback)
                return fallback, package, problem
        self._set_link("current", None)
        return None, None, problem

    def describe(self) -> dict[str, Any]:
        """JSON-ready view of the slots, for the status command."""
        slots = {}
        for slot in SLOTS:
            manifest: dict[str, Any] = {}
            try:
                manifest = json.loads((self.slot_dir(slot) / "manifest.json").read_text())
            except (OSError, ValueError):
                pass
            slots[slot] = {"package_id": self.package_id(slot), "name": manifest.get("name"),
                           "version": manifest.get("version")}
        return {"current": self.current(), "previous": self.previous(), "slots": slots, **self._accepted()}
