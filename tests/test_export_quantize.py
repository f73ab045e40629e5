"""int8 quantisation choices on small exported graphs: which nodes stay fp32 (the head), which
method each model family gets, static calibration, and the errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from transfuse.errors import UserError


class ConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU6(), torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.ReLU6(),
            torch.nn.Conv2d(8, 16, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.backbone(x)), -1)


class TokenNet(torch.nn.Module):
    """Linear layers on (B, T, D) tokens export as MatMul, as in a transformer."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 32))
        self.head = torch.nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.backbone(x).mean(1)), -1)


def export(net: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (x,), str(path), dynamo=True, input_names=["input"], output_names=["proba"],
                          dynamic_shapes=({0: "batch"},), verbose=False, external_data=False)
    return path


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict[str, tuple[Path, np.ndarray]]:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("q")
    xc, xt = torch.rand(40, 3, 12, 12), torch.randn(40, 5, 16)
    return {"conv": (export(ConvNet(), xc, d / "conv.onnx"), xc.numpy()),
            "token": (export(TokenNet(), xt, d / "token.onnx"), xt.numpy())}


def run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["proba"], {"input": x})[0]


def test_head_stays_fp32_and_method_follows_the_family(graphs):
    import onnx

    from transfuse.export.quantize import choose_method, fp32_nodes, weighted_nodes

    conv, token = (onnx.load(str(graphs[k][0])) for k in ("conv", "token"))
    for m in (conv, token):
        keep = set(fp32_nodes(m))
        head = {n.name for n in m.graph.node if "head.weight" in n.input}
        assert len(head) == 1 and head <= keep  # the head's Gemm
        assert not keep & {n for n in weighted_nodes(m) if n not in head}  # no backbone weight op kept
    assert list(weighted_nodes(conv).values()).count("Conv") == 3
    assert choose_method(conv) == "static" and choose_method(token) == "dynamic"


def test_without_scope_metadata_the_last_weighted_op_and_after_stay_fp32(graphs):
    import onnx

    from transfuse.export.quantize import fp32_nodes

    m = onnx.load(str(graphs["token"][0]))
    for n in m.graph.node:
        del n.metadata_props[:]
    keep = set(fp32_nodes(m))
    order = [n.name for n in m.graph.node]
    head = next(n.name for n in m.graph.node if "head.weight" in n.input)
    assert head in keep and order[-1] in keep  # the Gemm and the Softmax after it
    assert not keep & {n.name for n in m.graph.node if n.op_type == "MatMul"}


def test_dynamic_quantises_backbone_matmuls_only(graphs, tmp_path):
    import onnx

    from transfuse.export.quantize import quantize_int8

    src, x = graphs["token"]
    info = quantize_int8(src, tmp_path / "t8.onnx")
    assert info["method"] == "dynamic"
    ops = [n.op_type for n in onnx.load(str(tmp_path / "t8.onnx")).graph.node]
    assert ops.count("MatMulInteger") == 2  # the two backbone Linears; the head stays fp32
    g = onnx.load(str(tmp_path / "t8.onnx")).graph
    head = [n for n in g.node if any(i.startswith("head.weight") for i in n.input)]
    assert [n.op_type for n in head] in (["Gemm"], ["MatMul"])  # fp32, not MatMulInteger
    p, q = run(src, x), run(tmp_path / "t8.onnx", x)
    assert np.abs(p - q).max() < 0.02 and (p.argmax(1) == q.argmax(1)).mean() >= 0.9


def test_static_calibrates_on_real_inputs(graphs, tmp_path):
    import onnx

    from transfuse.export.quantize import quantize_int8

    src, x = graphs["conv"]
    with pytest.raises(UserError, match="static int8 needs calibration inputs; give real training inputs"):
        quantize_int8(src, tmp_path / "c8.onnx", method="static")
    info = quantize_int8(src, tmp_path / "c8.onnx", calibration=[{"input": x[i:i + 8]} for i in range(0, 40, 8)])
    assert info["method"] == "static"
    g = onnx.load(str(tmp_path / "c8.onnx")).graph
    assert sum(n.op_type == "QuantizeLinear" for n in g.node) >= 3
    gemm = next(n for n in g.node if n.op_type == "Gemm")
    assert "head.weight" in gemm.input  # the head reads its fp32 weight directly
    p, q = run(src, x), run(tmp_path / "c8.onnx", x)
    assert np.abs(p - q).max() < 0.02


def test_bad_method_and_missing_model(tmp_path, graphs):
    from transfuse.export.quantize import quantize_int8

    with pytest.raises(UserError, match="int8 method 'fp8' is not valid; use one of auto, dynamic, static"):
        quantize_int8(graphs["token"][0], tmp_path / "x.onnx", method="fp8")
    with pytest.raises(UserError, match="does not exist; export the fp32 ONNX model first"):
        quantize_int8(tmp_path / "none.onnx", tmp_path / "x.onnx")
