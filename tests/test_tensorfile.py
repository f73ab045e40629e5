"""Checked safetensors headers: every hostile header the official library refuses is refused here
too, in one line naming the file and the tensor, before a byte of tensor data is read."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from transfuse.errors import UserError
from transfuse.tensorfile import FIX, read_safetensors_header


def raw_file(path: Path, header: object, data: bytes = b"", length: int | None = None) -> Path:
    """A safetensors file with exactly this header (any JSON) and data bytes."""
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head) if length is None else length) + head + data)
    return path


def f32(*values: float) -> bytes:
    return struct.pack(f"<{len(values)}f", *values)


def test_a_file_written_by_safetensors_reads_back_with_its_spans(tmp_path):
    t = {"b": torch.arange(3, dtype=torch.float32), "a": torch.ones(2, 2, dtype=torch.float16)}
    save_file(t, tmp_path / "m.safetensors", metadata={"format": "pt"})
    spans, meta = read_safetensors_header(tmp_path / "m.safetensors")
    assert meta == {"format": "pt"}
    raw = (tmp_path / "m.safetensors").read_bytes()
    for name, s in spans.items():
        assert s.nbytes == t[name].numel() * t[name].element_size()
        got = torch.frombuffer(bytearray(raw[s.start:s.start + s.nbytes]), dtype=t[name].dtype)
        assert torch.equal(got.reshape(s.shape), t[name])


BAD = {
    "overlap": ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                 "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, f32(1, 2),
                "tensor 'b' overlaps tensor 'w' (their data_offsets share bytes)"),
    "negative_range": ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}, f32(1, 2),
                       "tensor 'w' has invalid data_offsets (need [begin, end] with 0 <= begin <= end)"),
    "size_vs_shape": ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, f32(1, 2),
                      "tensor 'w' holds 8 bytes but dtype F32 x shape [3] needs 12"),
    "not_an_object": ([1, 2, 3], b"", "not a safetensors file (the header is a JSON list, not an object)"),
    "missing_key": ({"w": {"dtype": "F32", "shape": [2]}}, f32(1, 2),
                    "tensor 'w' has no data_offsets in the header"),
    "past_eof": ({"w": {"dtype": "F32", "shape": [10_000_000_000], "data_offsets": [0, 40_000_000_000]}},
                 f32(1), "the bytes of tensor 'w' end at byte 40000000089 but the file has only 93 bytes (truncated)"),
    "bad_dtype": ({"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 4]}}, f32(1),
                  "tensor 'w' has unknown dtype 'Q7'"),
    "entry_not_object": ({"w": [0, 4]}, f32(1), "tensor 'w' is not described by a JSON object"),
    "bad_shape": ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, f32(1),
                  "tensor 'w' has an invalid shape"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_headers_are_one_line_errors_naming_file_and_tensor(tmp_path, case):
    header, data, message = BAD[case]
    path = raw_file(tmp_path / f"{case}.safetensors", header, data)
    with pytest.raises(UserError) as e:
        read_safetensors_header(path)
    text = str(e.value)
    assert text.startswith(f"{path}: ") and message in text and text.endswith(FIX), text
    assert "\n" not in text
    with pytest.raises(Exception):  # the official library refuses the same files
        load_file(path)


def test_header_length_beyond_the_file_or_limit_is_refused(tmp_path):
    path = raw_file(tmp_path / "long.safetensors", {}, length=1 << 40)
    with pytest.raises(UserError, match=r"not a safetensors file \(header length 1099511627776 bytes"):
        read_safetensors_header(path)
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(UserError, match="2 bytes, shorter than its 8-byte header length"):
        read_safetensors_header(tmp_path / "short.safetensors")
    (tmp_path / "text.safetensors").write_bytes(struct.pack("<Q", 5) + b"hello")
    with pytest.raises(UserError, match="the header is not JSON"):
        read_safetensors_header(tmp_path / "text.safetensors")


def test_zero_size_tensors_may_share_an_offset(tmp_path):
    path = raw_file(tmp_path / "z.safetensors", {
        "e": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
        "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, f32(3))
    spans, _ = read_safetensors_header(path)
    assert spans["e"].nbytes == 0 and spans["w"].nbytes == 4


def test_merge_refuses_overlapping_offsets_instead_of_merging_wrong_weights(tmp_path):
    from transfuse.fuse.merge import merge

    save_file({"w": torch.ones(2), "b": torch.ones(1)}, tmp_path / "a.safetensors")
    header, data, _ = BAD["overlap"]
    raw_file(tmp_path / "b.safetensors", header, data)
    cfg = {"merge_method": "linear", "models": [{"model": str(tmp_path / "a.safetensors")},
                                                {"model": str(tmp_path / "b.safetensors")}]}
    with pytest.raises(UserError, match="b.safetensors: tensor 'b' overlaps tensor 'w'"):
        merge(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_served_model_files_are_checked_before_loading(tmp_path):
    """A run's head file with a bad header is a one-line error, not a safetensors exception."""
    from transfuse.artifacts.serve import _tensors
    from transfuse.artifacts.spec import ModelSpec

    header, data, _ = BAD["past_eof"]
    raw_file(tmp_path / "head.safetensors", header, data)
    spec = ModelSpec(kind="probe", candidate="x", modality="image", classes=["a", "b"],
                     files={"head": "head.safetensors"})
    with pytest.raises(UserError, match="head.safetensors: the bytes of tensor 'w' end at byte"):
        _tensors(tmp_path, spec, "head")
    (tmp_path / "head.safetensors").unlink()
    with pytest.raises(UserError, match="head.safetensors' is missing; rerun the candidate"):
        _tensors(tmp_path, spec, "head")
