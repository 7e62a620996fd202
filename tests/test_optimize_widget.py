"""OptimizeExplorer on a real optimize() result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_optimize_onnx import FAST, labelled, make_mlp

from workbench.errors import ConfigError
from workbench.optimize import optimize


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> object:
    mlp = make_mlp(tmp_path_factory.mktemp("explorer") / "mlp.onnx")
    x, _ = labelled(mlp)
    import onnxruntime as ort

    reference = ort.InferenceSession(str(mlp), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    def neg_mse(outputs: np.ndarray, ref: np.ndarray) -> float:
        return -float(np.mean((outputs - ref) ** 2))

    # No quality loss allowed: INT8 must break it, so the layers get ranked and excluded.
    return optimize(mlp, "x86-server", eval_data=(x, reference), calibration_data=x, metric=neg_mse,
                    max_accuracy_drop=0.0, passes=["int8-dynamic", "int8-static-minmax"], use_cache=False, **FAST)


def test_explorer_plots_every_candidate_when_built(result: object) -> None:
    import widgets

    explorer = widgets.OptimizeExplorer(result)
    trace = explorer.figure.data[0]
    assert sorted(trace.customdata) == sorted(r["variant"] for r in result.rows)  # type: ignore[attr-defined]
    assert "int8-dynamic" in explorer.table.value
    assert explorer.selected == (result.best.variant or "fp32")  # type: ignore[attr-defined]


def test_explorer_shows_recipe_and_verdict_when_point_selected(result: object) -> None:
    import widgets

    explorer = widgets.OptimizeExplorer(result)
    explorer.select("int8-dynamic")
    assert "int8-dynamic" in explorer.details.value and "MatMul" in explorer.details.value
    chosen = result.best.variant == "int8-dynamic"  # type: ignore[attr-defined]
    assert ("<p>chosen (the reason is above)" in explorer.details.value) == chosen
    assert ("not chosen" in explorer.details.value) == (not chosen)


def test_explorer_shows_layer_ranking_when_int8_was_excluded_from_layers(result: object) -> None:
    import widgets

    variant = next(iter(result.layers))  # type: ignore[attr-defined]
    explorer = widgets.OptimizeExplorer(result)
    explorer.select(variant)
    assert "added error dB" in explorer.details.value


def test_explorer_select_raises_when_variant_unknown(result: object) -> None:
    import widgets

    explorer = widgets.OptimizeExplorer(result)
    with pytest.raises(ConfigError, match="no candidate 'nope'"):
        explorer.select("nope")


def test_explorer_raises_when_given_something_else() -> None:
    import widgets

    with pytest.raises(ConfigError, match=r"workbench\.optimize"):
        widgets.OptimizeExplorer(Path("."))


def test_explorer_says_the_reason_once_and_labels_only_fp32_and_choice_when_shown(result: object) -> None:
    import widgets

    explorer = widgets.OptimizeExplorer(result)
    page = explorer.snapshot()["text/html"]
    reason = result.best.reason  # type: ignore[attr-defined]
    assert page.count(reason.split(";")[0]) == 1, page
    labels = [text for text in explorer.figure.data[0].text if text]
    assert sorted(labels) == sorted({"fp32", result.best.variant or "fp32"})  # type: ignore[attr-defined]
    title = explorer.figure.layout.title.text
    assert len(title.split("<br>")[0]) <= 60, title  # the long part is a subtitle line, not clipped


def test_explorer_table_is_compact_with_units_and_full_table_behind_toggle_when_shown(result: object) -> None:
    import widgets

    table = widgets.OptimizeExplorer(result).table.value
    compact, _, full = table.partition("<details>")
    assert "p50 (ms)" in compact and "size (MB)" in compact and "vs FP32 (x)" in compact
    assert "p99_ms" not in compact and "rss_growth_mb" not in compact
    assert "<summary>All columns</summary>" in "<details>" + full and "p99_ms" in full
