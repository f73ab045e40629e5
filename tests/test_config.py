import subprocess
import sys
import time

import pytest

from transfuse.config import apply_overrides, load_config, validate_config
from transfuse.errors import UserError

BASE = {"backbones": ["bundled:efficientnet_lite0"]}


def test_defaults_and_backbone_shorthand():
    cfg = validate_config(BASE)
    assert cfg.backbones[0].name == "bundled:efficientnet_lite0"
    assert cfg.split.folds == 5 and cfg.adapt.strategies == ["linear_probe"]


def test_unknown_key_names_key_suggestion_and_valid_keys():
    with pytest.raises(UserError, match=r"unknown key 'train.finetune.epoch'; did you mean 'epochs'\? valid keys here: epochs, batch_size"):
        validate_config({**BASE, "train": {"finetune": {"epoch": 3}}})


def test_bad_literal_lists_allowed_values():
    with pytest.raises(UserError, match=r"'adapt.strategies.0' has invalid value 'probe'.*'linear_probe', 'finetune' or 'lp_ft'"):
        validate_config({**BASE, "adapt": {"strategies": ["probe"]}})


def test_out_of_range_and_missing():
    with pytest.raises(UserError, match=r"'split.folds' has invalid value 1: .*greater than or equal to 2"):
        validate_config({**BASE, "split": {"folds": 1}})
    with pytest.raises(UserError, match=r"key 'backbones' is required"):
        validate_config({})


def test_overrides_parse_yaml_values_and_do_not_mutate():
    raw = {**BASE, "train": {"finetune": {"epochs": 5}}}
    out = apply_overrides(raw, ["train.finetune.epochs=2", "adapt.strategies=[linear_probe, lp_ft]"])
    assert out["train"]["finetune"]["epochs"] == 2
    assert out["adapt"]["strategies"] == ["linear_probe", "lp_ft"]
    assert raw["train"]["finetune"]["epochs"] == 5
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        apply_overrides(raw, ["train.finetune.epochs"])


def test_yaml_file_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbones: [a\n")
    with pytest.raises(UserError, match=r"bad.yaml.* line \d+: not valid YAML"):
        load_config(bad)


def test_cli_config_typo_is_one_line_fast_no_traceback(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("backbones: [bundled:efficientnet_lite0]\ntrian:\n  head: {}\n")
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "transfuse.cli", "run", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0
    assert "unknown key 'trian'; did you mean 'train'?" in p.stderr
    assert "Traceback" not in p.stderr
    assert elapsed < 2.0, elapsed


def test_demo_configs_validate():
    from pathlib import Path

    import transfuse.cli as cli

    names = sorted(p.stem for p in Path(cli.DEMOS).glob("*.yaml"))
    assert "image" in names
    for n in names:
        load_config(Path(cli.DEMOS) / f"{n}.yaml")


def test_head_lr_auto_is_10x_for_a_fresh_head_and_1x_for_lp_ft():
    from transfuse.config import FinetuneConfig

    cfg = FinetuneConfig(lr=3e-4)
    assert cfg.head_lr == "auto"
    assert cfg.resolved_head_lr() == pytest.approx(3e-3)
    assert cfg.resolved_head_lr(head_trained=True) == pytest.approx(3e-4)
    assert FinetuneConfig(lr=3e-4, head_lr="5x").resolved_head_lr(head_trained=True) == pytest.approx(1.5e-3)
    with pytest.raises(ValueError, match="or 'auto'"):
        FinetuneConfig(head_lr="fast")
