"""Dynamic int8 quantisation of an ONNX model with onnxruntime (weights int8, activations
quantised on the fly): no calibration data, smaller files, faster MatMul/Gemm on CPU."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from transfuse.errors import UserError


def quantize_int8(src: str | Path, dst: str | Path, op_types: list[str] | None = None) -> Path:
    """Write an int8 copy of the fp32 ONNX model ``src`` to ``dst`` (atomically).

    ``op_types`` limits which operators are quantised (default: onnxruntime's dynamic set,
    MatMul/Gemm/Conv/Attention/...)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise UserError(f"quantize: {str(src)!r} does not exist; export the fp32 ONNX model first")
    tmp = dst.with_name("." + dst.name + ".tmp")
    level = logging.getLogger().level
    try:
        logging.getLogger().setLevel(logging.ERROR)  # onnxruntime logs a hint per model at WARNING
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8,
                             op_types_to_quantize=op_types)
    finally:
        logging.getLogger().setLevel(level)
    tmp.replace(dst)
    return dst
