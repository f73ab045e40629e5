"""Text backbones. Importing this package registers ``hf:``, ``bundled:minilm_l6``,
``bundled:minilm_l3`` and the ``tfidf`` baseline (models load only when built)."""

from transfuse.backbones.text import bert, minilm_onnx, tfidf  # noqa: F401  (registration)
from transfuse.backbones.text.bert import (
    TextBackbone,
    load_hf,
    load_minilm_l6,
    mean_pool,
)
from transfuse.backbones.text.minilm_onnx import load_minilm_l3
from transfuse.backbones.text.tfidf import TfidfClassifier

__all__ = ["TextBackbone", "TfidfClassifier", "load_hf", "load_minilm_l3", "load_minilm_l6", "mean_pool"]
