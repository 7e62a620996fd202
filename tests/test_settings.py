"""One typed settings object holds every WORKBENCH_* variable, and docs/settings.md lists each one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO

from workbench import Settings, settings
from workbench.errors import ConfigError

# A read of a WORKBENCH_* variable anywhere but workbench/_settings.py: os.environ[...], .get(...), getenv(...);
# setting one for a child process (os.environ[...] = ...) is no read.
_READ = re.compile(r"""(?:environ(?:\.get)?\s*[\[(]|getenv\s*\()\s*\\?["']WORKBENCH_\w+\\?["'](?!\]\s*=[^=])""")


def test_nothing_but_the_settings_module_reads_a_workbench_variable_when_the_tree_is_scanned() -> None:
    readers = []
    for folder in ("workbench", "widgets", "tests", "benchmarks", "notebooks", "binder"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix not in (".py", ".ipynb") or path.name == "_settings.py" or path.name == Path(__file__).name:
                continue
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if _READ.search(line):
                    readers.append(f"{path.relative_to(REPO)}:{number}: {line.strip()[:100]}")
    assert not readers, "read these through workbench.settings() instead:\n" + "\n".join(readers)


def test_settings_doc_lists_every_variable_with_its_default_when_compared_with_the_code() -> None:
    text = (REPO / "docs" / "settings.md").read_text()
    rows = re.findall(r"^\| `(WORKBENCH_[A-Z_]+)` \| (.+?) \| (.+?) \|$", text, re.M)
    assert [(v, w, d) for v, w, d in rows] == [(r["variable"], r["what"], r["default"]) for r in Settings.table()]


def test_settings_type_each_variable_when_they_are_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORKBENCH_RUN_DIR", "~/fleet-a")
    monkeypatch.setenv("WORKBENCH_DASHBOARD_METRICS", "latency_p95_ms, cpu_percent")
    monkeypatch.setenv("WORKBENCH_BINDER_CHECK", "0")
    monkeypatch.setenv("WORKBENCH_TELEMETRY_DB", "")
    current = settings()
    assert current.run_dir == Path.home() / "fleet-a"
    assert current.dashboard_metrics == ("latency_p95_ms", "cpu_percent")
    assert current.binder_check is False
    assert current.telemetry_db is None  # set to nothing: the default (in memory) applies


@pytest.mark.parametrize(("variable", "value", "words"), [
    ("WORKBENCH_BINDER_CHECK", "maybe", "WORKBENCH_BINDER_CHECK='maybe' is not a yes/no value"),
    ("WORKBENCH_DASHBOARD_METRICS", " , ", "names no metric"),
])
def test_settings_name_the_variable_when_a_value_is_malformed(variable: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        Settings.from_env({variable: value})
