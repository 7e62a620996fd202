"""Mixed INT8/FP32 for transformers: attention matmuls, Softmax and LayerNorm stay FP32, and the report says so."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from workbench.optimize import export_onnx, optimize
from workbench.optimize._passes import sensitive_nodes

FAST = {"use_cache": False, "iterations": 4, "rounds": 1, "warmup": 1, "sweep": False}


class Encoder(torch.nn.Module):
    """Two pre-norm encoder layers (d=32, 4 heads) over 16 token ids, mean-pooled into 5 classes."""

    def __init__(self, d: int = 32, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = torch.nn.Embedding(100, d)
        self.qkv = torch.nn.ModuleList([torch.nn.Linear(d, 3 * d) for _ in range(layers)])
        self.proj = torch.nn.ModuleList([torch.nn.Linear(d, d) for _ in range(layers)])
        self.ff = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(d, 2 * d), torch.nn.GELU(),
                                                           torch.nn.Linear(2 * d, d)) for _ in range(layers)])
        self.norm1 = torch.nn.ModuleList([torch.nn.LayerNorm(d) for _ in range(layers)])
        self.norm2 = torch.nn.ModuleList([torch.nn.LayerNorm(d) for _ in range(layers)])
        self.head = torch.nn.Linear(d, 5)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        b, t, _ = h.shape
        for qkv, proj, ff, n1, n2 in zip(self.qkv, self.proj, self.ff, self.norm1, self.norm2, strict=True):
            q, k, v = qkv(n1(h)).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            scores = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
            h = h + proj((scores @ v).transpose(1, 2).reshape(b, t, -1))
            h = h + ff(n2(h))
        return self.head(h.mean(dim=1))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = Encoder().eval()
    return export_onnx(model, torch.randint(0, 100, (1, 16)), tmp_path_factory.mktemp("mixed") / "encoder.onnx")


def test_sensitive_nodes_are_the_attention_matmuls_when_model_is_an_encoder(encoder: Path) -> None:
    graph = onnx.load(str(encoder)).graph
    found = sensitive_nodes(encoder)
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    assert len(found) == 4, found  # Q·Kᵀ and scores·V in each of the two layers
    by_name = {n.name: n for n in matmuls}
    weights = {i.name for i in graph.initializer}
    assert all(not (set(by_name[name].input) & weights) for name in found)
    assert len(matmuls) > len(found)  # the projections with weights are not among them


def test_mixed_variant_keeps_attention_and_softmax_in_fp32_and_reports_cost_when_model_is_a_transformer(
        encoder: Path) -> None:
    ids = np.random.default_rng(3).integers(0, 100, (48, 16)).astype(np.int64)
    result = optimize(encoder, "x86-server", eval_data={"input": ids[:32]}, calibration_data={"input": ids[32:]},
                      metric="agreement", passes=["int8-static-minmax"], **FAST)
    rows = {row["variant"]: row for row in result.rows}
    assert {"int8-static-minmax", "int8-static-minmax-mixed"} <= set(rows), result.skipped
    assert sorted(rows["int8-static-minmax-mixed"]["excluded_layers"]) == sorted(sensitive_nodes(encoder))

    built = onnx.load(str(result.files["int8-static-minmax-mixed"])).graph
    producers = {out: node for node in built.node for out in node.output}
    dequantized = {out for node in built.node if node.op_type == "DequantizeLinear" for out in node.output}
    for node in built.node:
        if node.op_type in ("Softmax", "LayerNormalization") or node.name in rows[
                "int8-static-minmax-mixed"]["excluded_layers"]:
            assert not set(node.input) & dequantized, (node.name, [producers.get(i) for i in node.input])
    projections = [n for n in built.node if n.op_type == "MatMul" and set(n.input) & dequantized]
    assert projections, "the weight matmuls must still run on INT8"

    cost = [note for note in result.notes if note.startswith("int8-static-minmax-mixed keeps")]
    assert len(cost) == 1 and "Softmax, LayerNorm" in cost[0] and "p50" in cost[0], result.notes
