import subprocess
import sys
import time

import pytest
from pydantic import ValidationError

from transfuse.config import (
    ExperimentConfig,
    apply_overrides,
    format_validation_error,
    load_config,
    validate_config,
)
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
    with pytest.raises(UserError, match=r"'adapt.strategies.0' has invalid value 'probe'.*'linear_probe', 'multilayer_probe', 'finetune', 'lp_ft' or 'partial_ft'"):
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


TOP_KEYS = ("name, seed, data, split, preprocess, augment, backbones, adapt, train, evaluate, fuse, search, "
            "calibration, export, output, budget")


def message(raw) -> str:
    with pytest.raises(UserError) as e:
        validate_config(raw, source="exp.yaml")
    return str(e.value)


def test_every_problem_is_reported_at_once_unknown_then_missing_then_invalid():
    # 'backbones' is missing too, but as the did-you-mean of 'bakbones' it is reported once, as the typo
    assert message({"bakbones": ["x"], "split": {"fold": 3}, "train": {"head": {"weight_decay": -1}}}) == (
        "exp.yaml: 3 problems:\n"
        f"  - unknown key 'bakbones'; did you mean 'backbones'? valid keys here: {TOP_KEYS}\n"
        "  - unknown key 'split.fold'; did you mean 'folds'? valid keys here: folds, test_size\n"
        "  - key 'train.head.weight_decay' has invalid value -1: Input should be greater than or equal to 0")
    # groups in that order whatever the document order; within a group, the document's order
    assert message({"split": {"folds": 1}, "backbones": [{"options": {}}], "trian": {}, "sead": 1}) == (
        "exp.yaml: 4 problems:\n"
        f"  - unknown key 'trian'; did you mean 'train'? valid keys here: {TOP_KEYS}\n"
        f"  - unknown key 'sead'; did you mean 'seed'? valid keys here: {TOP_KEYS}\n"
        "  - key 'backbones.0.name' is required; add it to the config\n"
        "  - key 'split.folds' has invalid value 1: Input should be greater than or equal to 2")


def test_a_typo_inside_a_list_item_replaces_its_required_key():
    raw = {"backbones": [{"nmae": "x"}]}
    expected = "unknown key 'backbones.0.nmae'; did you mean 'name'? valid keys here: name, options"
    assert message(raw) == f"exp.yaml: {expected}"
    with pytest.raises(ValidationError) as e:
        ExperimentConfig.model_validate(raw)
    assert format_validation_error(e.value) == f"config: {expected}"


def test_the_members_of_a_union_are_one_problem():
    assert message({**BASE, "train": {"finetune": {"class_weight": "even"}},
                    "fuse": {"distill": {"temperature": [0, 2]}}}) == (
        "exp.yaml: 2 problems:\n"
        "  - key 'train.finetune.class_weight' has invalid value 'even': Input should be 'none' or "
        "'balanced'; or Input should be a valid tuple\n"
        "  - key 'fuse.distill.temperature' has invalid value [0, 2]: Input should be a valid number; "
        "or Input should be greater than 0")


def test_validator_messages_name_the_section_and_drop_pydantics_prefix():
    assert message({**BASE, "augment": {"image": {"crop_ratio": [2, 1]}}}) == (
        "exp.yaml: key 'augment.image' has invalid value {'crop_ratio': [2, 1]}: "
        "crop_ratio must be (low, high) with 0 < low <= high, got (2.0, 1.0)")


def test_huge_values_and_many_problems_are_bounded():
    msg = message({**BASE, "seed": "a" * 100_000, "x" * 1000: 1})
    assert msg == ("exp.yaml: 2 problems:\n"
                   f"  - unknown key '{'x' * 77}...'; valid keys here: {TOP_KEYS}\n"
                   f"  - key 'seed' has invalid value '{'a' * 27}...{'a' * 28}': Input should be a valid "
                   "integer, unable to parse string as an integer")
    many = message({**BASE, **{f"k{i}": 0 for i in range(50)}}).split("\n")
    assert many[0] == "exp.yaml: 50 problems:" and len(many) == 1 + 20 + 1
    assert many[1].startswith("  - unknown key 'k0';") and many[-1] == "  - ... and 30 more"


def test_config_imports_nothing_heavy_and_only_errors_of_transfuse():
    code = ("import sys, transfuse.config; "
            "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('transfuse.')}), "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['config', 'errors'] False"


def _bomb(levels: int) -> str:
    """A YAML alias bomb: ``levels`` anchors, each a list of 9 aliases of the previous one."""
    rows = ['  l0: &l0 ["xxxxxxxxxx", "xxxxxxxxxx", "xxxxxxxxxx"]']
    rows += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "name: bomb\nbackbones: [tfidf]\ndata:\n  source: folder\n  options:\n  " + "\n  ".join(rows) + "\n"


def test_alias_bombs_are_refused_before_expansion(tmp_path):
    from transfuse.config.load import MAX_VALUES

    f = tmp_path / "bomb.yaml"
    f.write_text(_bomb(9))  # ~0.5 KB; 3 * 9^8 strings if expanded
    t = time.perf_counter()
    with pytest.raises(UserError) as e:
        load_config(f)
    assert time.perf_counter() - t < 2
    assert str(e.value) == (f"config file {str(f)!r}: its aliases (*name) expand to more than {MAX_VALUES} "
                            "values (an alias bomb?); write the values out or use fewer aliases")
    with pytest.raises(UserError, match="--set seed: its aliases"):  # the same bound on --set values
        apply_overrides(BASE, ["seed=" + "{a: &a [1,1,1,1,1,1,1,1,1,1], b: &b [" + ", ".join(["*a"] * 30)
                                + "], c: &c [" + ", ".join(["*b"] * 30) + "], d: [" + ", ".join(["*c"] * 30) + "]}"])


def test_small_aliases_still_work_and_are_written_expanded(tmp_path):
    from transfuse.config import config_to_yaml

    f = tmp_path / "ok.yaml"
    f.write_text("name: ok\nbackbones: [bundled:efficientnet_lite0]\n"
                 "data: {source: folder, path: &p /data, test_path: *p}\n")
    cfg = load_config(f)
    assert cfg.data.test_path == "/data"
    assert "test_path: /data" in config_to_yaml(cfg)


def test_deep_nesting_and_recursive_aliases_are_one_line_errors(tmp_path):
    deep = tmp_path / "deep.yaml"
    deep.write_text("seed: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(UserError) as e:
        load_config(deep)
    assert str(e.value) == (f"config file {str(deep)!r} line 1: nested more than 50 levels deep; a config "
                            "needs a few levels, flatten the value")
    rec = tmp_path / "rec.yaml"
    rec.write_text("seed: &a [1, *a]\n")
    with pytest.raises(UserError, match=r"rec.yaml': an alias refers to a collection that contains it "
                                        r"\(recursive\); write the value out instead of the alias"):
        load_config(rec)


def test_misspelt_data_source_option_gives_did_you_mean():
    from transfuse.artifacts.store import check_data_options

    cfg = validate_config(apply_overrides({**BASE, "data": {"source": "folder", "path": "/d"}},
                                          ["data.options.valdate=false"]))
    with pytest.raises(UserError) as e:
        check_data_options(cfg)
    assert str(e.value) == ("data.options.valdate: data source 'folder' has no such option; did you mean "
                            "'validate'? valid options: validate")
    cfg = validate_config({**BASE, "data": {"source": "text_table", "path": "/d.csv", "modality": "text",
                                            "test_options": {"text_col": "t"}}, "backbones": ["tfidf"]})
    check_data_options(cfg)  # no test set: test_options unused
    cfg = validate_config({**BASE, "data": {"source": "text_table", "path": "/d.csv", "modality": "text",
                                            "test_path": "/t.csv", "test_options": {"text_col": "t"}}})
    with pytest.raises(UserError, match=r"^data.test_options.text_col: data source 'text_table' has no such "
                                        r"option; did you mean 'text_column'\? valid options: text_column, "):
        check_data_options(cfg)


def test_variants_are_named_fine_tunes_with_their_own_seed_and_settings():
    from transfuse.pipeline.singles import singles_order

    cfg = validate_config({"backbones": ["tfidf", "bundled:minilm_l3", "bundled:minilm_l6"],
                           "train": {"finetune": {"epochs": 4, "lr": 2e-5}},
                           "adapt": {"strategies": ["finetune", "linear_probe"], "baseline": False,
                                     "variants": {"lp_ft_seed1": {"strategy": "lp_ft", "seed": 1},
                                                  "finetune-lr": {"strategy": "finetune", "finetune": {"lr": 1e-4}}}}})
    v = cfg.adapt.variants
    assert v["lp_ft_seed1"].settings(cfg.train.finetune) == cfg.train.finetune
    assert v["finetune-lr"].settings(cfg.train.finetune) == cfg.train.finetune.model_copy(update={"lr": 1e-4})
    order = singles_order(cfg, lambda b: b.name == "tfidf")
    assert [(b.name.split(":")[-1], s, label) for b, s, label in order] == [
        ("tfidf", None, None), ("minilm_l3", "linear_probe", "linear_probe"),
        ("minilm_l6", "linear_probe", "linear_probe"),  # cheap first, then the strategies, then the variants
        ("minilm_l3", "finetune", "finetune"), ("minilm_l6", "finetune", "finetune"),
        ("minilm_l3", "lp_ft", "lp_ft_seed1"), ("minilm_l6", "lp_ft", "lp_ft_seed1"),
        ("minilm_l3", "finetune", "finetune-lr"), ("minilm_l6", "finetune", "finetune-lr")]
    # the resolved config (config.yaml) reads back the same
    assert validate_config(cfg.model_dump(mode="json")) == cfg
    # values are kept as validated; the seed a variant's fits get: its own plus the fold index
    assert validate_config({**BASE, "adapt": {"variants": {"v": {"strategy": "finetune", "finetune": {
        "lr": "1e-4", "head_lr": "10 x"}}}}}).adapt.variants["v"].finetune == {"lr": 1e-4, "head_lr": "10x"}
    assert v["lp_ft_seed1"].seed_shift(7) == -6 and v["lp_ft_seed1"].seed_shift(0) == 1
    assert v["finetune-lr"].seed_shift(7) == 0  # no seed of its own: the run's


@pytest.mark.parametrize("variants, problem", [
    ({"finetune": {"strategy": "finetune", "seed": 1}}, "key 'adapt.variants' has invalid value {'finetune': "
     "{'seed': 1, 'strategy': 'finetune'}}: variant name 'finetune' is a strategy's name; name it e.g. "
     "'finetune_seed1'"),
    ({"a.b": {"strategy": "finetune", "seed": 1}}, "key 'adapt.variants' has invalid value {'a.b': {'seed': 1, "
     "'strategy': 'finetune'}}: variant name 'a.b' must be letters, digits, '_' and '-' (starting with a letter or "
     "digit), e.g. 'finetune_seed1'"),
    ({"LP_FT": {"strategy": "finetune", "seed": 1}}, "key 'adapt.variants' has invalid value {'LP_FT': {'seed': 1, "
     "'strategy': 'finetune'}}: variant name 'LP_FT' is a strategy's name; name it e.g. 'LP_FT_seed1'"),
    ({"v": {"strategy": "lp_ft", "seed": 1}, "V": {"strategy": "lp_ft", "seed": 2}}, "key 'adapt.variants' "
     "has invalid value {'V': {'seed': 2, 'strategy': 'lp_ft'}, 'v': {'seed': 1, 'strategy': 'lp_ft'}}: "
     "variant names ['V', 'v'] differ only in case: their folders would collide where file names ignore it"),
    ({"x": {"strategy": "lp_ft"}}, "key 'adapt.variants.x' has invalid value {'strategy': 'lp_ft'}: a variant needs "
     "a seed or finetune keys to change; without either it is a copy of its strategy 'lp_ft'"),
    ({"x": {"strategy": "lp_ft", "seed": -1}}, "key 'adapt.variants.x.seed' has invalid value -1: Input should be "
     "greater than or equal to 0"),
    ({"x": {"strategy": "partial_ft"}}, "key 'adapt.variants.x.strategy' has invalid value 'partial_ft': "
     "Input should be 'finetune' or 'lp_ft'"),
    ({"x": {"strategy": "finetune", "finetune": {"lrr": 1}}}, "key 'adapt.variants.x.finetune' has invalid value "
     "{'lrr': 1}: unknown key 'lrr'; did you mean 'lr'? a variant's finetune takes the keys of train.finetune but "
     "inner_val, image_size, accelerator, devices, num_nodes, strategy"),
    ({"x": {"strategy": "lp_ft", "finetune": {"image_size": 112}}}, "key 'adapt.variants.x.finetune' has "
     "invalid value {'image_size': 112}: 'image_size' cannot differ between variants (a backbone's fine-tunes "
     "share one image size, so that its soups average like networks); set train.finetune.image_size instead"),
    ({"x": {"strategy": "finetune", "finetune": {"inner_val": 0.3}}}, "key 'adapt.variants.x.finetune' has "
     "invalid value {'inner_val': 0.3}: 'inner_val' cannot differ between variants (each fine-tune chooses its "
     "epochs on the run's inner split, which greedy soups choose on too); set train.finetune.inner_val instead"),
    ({"x": {"strategy": "finetune", "finetune": {"head_lr": "abc"}}}, "key 'adapt.variants.x.finetune' has "
     "invalid value {'head_lr': 'abc'}: head_lr: head_lr must be a learning rate (e.g. 0.001), a multiple of lr "
     "like '10x', or 'auto'; got 'abc'"),
    ({"x": {"strategy": "finetune", "sed": 1}}, "unknown key 'adapt.variants.x.sed'; did you mean 'seed'? "
     "valid keys here: strategy, seed, finetune"),
])
def test_a_bad_variant_is_one_line_naming_its_key(variants, problem):
    assert message({**BASE, "adapt": {"variants": variants}}) == f"exp.yaml: {problem}"
