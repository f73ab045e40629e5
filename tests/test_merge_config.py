"""mergekit YAML format: parsing, round trip, and one-line errors naming key, value and valid values."""

from __future__ import annotations

import pytest
import yaml

from transfuse.errors import UserError
from transfuse.fuse.merge import load_config
from transfuse.fuse.merge.config import resolve_setting

MERGEKIT_TIES = """
models:
  - model: psmathur/orca_mini_v3_13b
    parameters:
      density: [{filter: mlp, value: 0.3}, {value: 0.5}]
      weight: 0.5
  - model: garage-bAInd/Platypus2-13B
    parameters:
      density: 0.5
      weight: 0.3
merge_method: ties
base_model: TheBloke/Llama-2-13B-fp16
parameters:
  normalize: true
  int8_mask: true
dtype: float16
"""


def test_mergekit_ties_example_parses_and_round_trips(tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text(MERGEKIT_TIES)
    cfg = load_config(path)
    assert cfg.merge_method == "ties" and cfg.base_model == "TheBloke/Llama-2-13B-fp16"
    assert [m.name for m in cfg.models] == ["orca_mini_v3_13b", "Platypus2-13B"]
    assert cfg.models[1].parameters == {"density": 0.5, "weight": 0.3}
    assert cfg.parameters == {"normalize": True, "int8_mask": True} and cfg.dtype == "float16"
    again = load_config(yaml.safe_load(cfg.to_yaml()), root=cfg.root)
    assert again == cfg


def test_filter_lists_pick_the_first_matching_entry():
    setting = [{"filter": "mlp", "value": 0.3}, {"filter": "attn", "value": 0.1}, {"value": 0.5}]
    assert resolve_setting(setting, "layers.0.mlp.up.weight") == 0.3
    assert resolve_setting(setting, "layers.0.self_attn.q.weight") == 0.1
    assert resolve_setting(setting, "embed.weight") == 0.5
    assert resolve_setting(0.7, "anything") == 0.7


def test_transfuse_keys_round_trip():
    cfg = load_config({"merge_method": "dare_ties", "base_model": "b", "models": ["x/a", "y/a"],
                       "seed": 3, "device": "cpu", "max_shard_size": "500MB", "heads": "auto",
                       "tied": {"lm_head.weight": "embed.weight"}, "parameters": {"lambda": 0.7}})
    assert [m.name for m in cfg.models] == ["a", "a_2"] and cfg.max_shard_size == 500 * 10**6
    assert load_config(cfg.to_dict()) == cfg
    assert cfg.with_parameters(**{"lambda": 0.2}).parameters["lambda"] == 0.2


@pytest.mark.parametrize("config,pattern", [
    ({"merge_method": "tie", "models": ["a"]}, r"unknown merge method 'tie'; valid names: .*ties"),
    ({"merge_method": "ties", "models": ["a"], "modles": 1}, r"unknown merge config key 'modles'; valid keys: .*models"),
    ({"merge_method": "ties", "slices": []}, r"^slices: supported with merge_method: passthrough only"),
    ({"merge_method": "passthrough", "slices": [{"sources": [{"model": "a", "layer_range": [0, 2]},
                                                             {"model": "b", "layer_range": [0, 2]}]}]},
     r"slices\[0\].sources: passthrough takes exactly one source per slice, got 2"),
    ({"merge_method": "passthrough", "slices": [{"sources": [{"model": "a", "layer_range": [3, 1]}]}]},
     r"slices\[0\].sources\[0\].layer_range: got \[3, 1\]; give \[START, END\]"),
    ({"merge_method": "passthrough", "models": ["a"], "slices": [
        {"sources": [{"model": "a", "layer_range": [0, 1]}]}]}, r"either models: or slices:"),
    ({"merge_method": "passthrough", "slices": [{"sources": [
        {"model": "a", "layer_range": [0, 1], "parameters": {"weight": 1}}]}]},
     r"slices\[0\].parameters: unknown parameter 'weight'.*valid parameters: scale"),
    ({"merge_method": "linear", "models": ["a"], "modules": {}}, r"'modules'.*not supported"),
    ({"merge_method": "ties", "models": ["a"], "dtype": "fp16"}, r"dtype: got 'fp16'; valid values: float32, float16, bfloat16"),
    ({"merge_method": "ties", "models": ["a"], "parameters": {"t": 0.5}},
     r"parameters: unknown parameter 't' for merge method 'ties'; valid parameters: .*density"),
    ({"merge_method": "ties", "models": [{"model": "a", "parameters": {"normalize": True}}]},
     r"models\[0\].parameters: unknown parameter 'normalize'.*valid parameters: density, weight"),
    ({"merge_method": "ties", "models": [{"model": "a", "parameters": {"density": "high"}}]},
     r"parameter 'density' must be a float, got 'high'"),
    ({"merge_method": "slerp", "models": ["a"], "parameters": {"t": [0, 0.5, 1]}},
     r"layer gradients are not supported"),
    ({"merge_method": "ties", "models": [{"model": "a", "weight": 1}]},
     r"models\[0\]: unknown key 'weight'; valid keys: model, name, parameters"),
    ({"merge_method": "ties", "models": []}, r"'models' must be a non-empty list"),
    ({"models": ["a"]}, r"'merge_method' is missing"),
    ({"merge_method": "linear", "models": ["a"], "max_shard_size": "lots"}, r"max_shard_size: got 'lots'"),
])
def test_errors_name_the_key_value_and_fix(config, pattern):
    with pytest.raises(UserError, match=pattern) as e:
        load_config(config)
    assert "\n" not in str(e.value)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("models: [a\n")
    with pytest.raises(UserError, match="bad.yaml: not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_passthrough_slices_parse_and_round_trip():
    cfg = load_config({"merge_method": "passthrough", "slices": [
        {"sources": [{"model": "a", "layer_range": [0, 4]}], "parameters": {"scale": 0.5}},
        {"sources": [{"model": "b", "layer_range": [2, 6], "parameters": {"scale": 2.0}}]},
        {"sources": [{"model": "a", "layer_range": [4, 8]}]}]})
    assert [m.model for m in cfg.models] == ["a", "b"]
    assert [(s.model, s.start, s.end, dict(s.parameters)) for s in cfg.slices] == [
        ("a", 0, 4, {"scale": 0.5}), ("b", 2, 6, {"scale": 2.0}), ("a", 4, 8, {})]
    assert load_config(cfg.to_dict()) == cfg
