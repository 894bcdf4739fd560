"""Typed configs: YAML plus dotted overrides; unknown keys and wrong types are one-sentence errors."""

from __future__ import annotations

import dataclasses

import pytest

from weightgen.config import ArchTemplate, TaskSelection, ZooConfig, from_dict, load_config, to_dict
from weightgen.errors import ConfigError

ZOO_KEYS = [f.name for f in dataclasses.fields(ZooConfig)]


def test_defaults_without_file():
    assert load_config(ZooConfig) == ZooConfig()


def test_yaml_file(debug_config_path):
    cfg = load_config(ZooConfig, debug_config_path)
    assert cfg.name == "debug"
    assert cfg.tasks == TaskSelection(ids=("digits-subset-3-5-8",), subset_k=(2, 3), subsets_per_k=3)
    assert cfg.held_out == ("digits-subset-3-5-8",)
    assert cfg.archs == (ArchTemplate("mlp", (16,)), ArchTemplate("cnn", (4,)))
    assert (cfg.seeds, cfg.epochs, cfg.models_per_shard) == (2, 3, 8)
    assert cfg.lr == ZooConfig().lr and cfg.optimizer == "adam"  # keys the YAML leaves out keep defaults


def test_dotted_overrides(debug_config_path):
    cfg = load_config(
        ZooConfig,
        debug_config_path,
        [
            "epochs=7",
            "tasks.subsets_per_k=2",
            "lr=0.5",
            "optimizer=sgd",
            "archs=[{family: cnn, hidden: [2, 3]}]",
            "held_out=[]",
            "name=other",
        ],
    )
    assert (cfg.epochs, cfg.tasks.subsets_per_k, cfg.lr, cfg.optimizer, cfg.name) == (
        7,
        2,
        0.5,
        "sgd",
        "other",
    )
    assert cfg.tasks.subset_k == (2, 3)  # the rest of the section is kept
    assert cfg.archs == (ArchTemplate("cnn", (2, 3)),)
    assert cfg.held_out == ()
    # an override may create a section the YAML does not have
    assert load_config(ZooConfig, None, ["tasks.ids=[iris]"]).tasks.ids == ("iris",)


def test_types_are_coerced(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1\nheld_out: digits-subset-3-5\narchs:\n  - {hidden: 8}\n")
    cfg = load_config(ZooConfig, path)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.held_out == ("digits-subset-3-5",)
    assert cfg.archs == (ArchTemplate("mlp", (8,)),)


def test_config_is_frozen_and_serialisable(debug_config_path):
    cfg = load_config(ZooConfig, debug_config_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 5
    d = to_dict(cfg)
    assert d["archs"] == [
        {"family": "mlp", "hidden": [16], "activation": "relu", "held_out": False},
        {"family": "cnn", "hidden": [4], "activation": "relu", "held_out": False},
    ]
    assert from_dict(ZooConfig, d) == cfg  # the config written beside a zoo reads back as the same config


def test_unknown_key_names_key_and_valid_keys(debug_config_path, tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(ZooConfig, debug_config_path, ["epoch=3"])
    msg = str(e.value)
    assert "'epoch'" in msg and all(k in msg for k in ZOO_KEYS)
    path = tmp_path / "c.yaml"
    path.write_text("tasks:\n  idz: [iris]\n")
    with pytest.raises(ConfigError) as e:
        load_config(ZooConfig, path)
    msg = str(e.value)
    assert "'idz'" in msg and "ids, subset_k, subsets_per_k" in msg
    with pytest.raises(ConfigError, match="'width'.*family, hidden, activation"):
        load_config(ZooConfig, None, ["archs=[{family: mlp, width: 3}]"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("epochs=abc", "epochs"),
        ("epochs=2.5", "epochs"),
        ("epochs=true", "epochs"),
        ("seeds=[1, 2]", "seeds"),
        ("name=5", "name"),
        ("tasks.subsets_per_k=x", "subsets_per_k"),
        ("tasks.subset_k=[2, x]", "subset_k"),
        ("tasks=3", "tasks"),
        ("archs=[{family: mlp, hidden: [a]}]", "hidden"),
        ("lr=abc", "lr"),
        ("held_out_fraction=[1]", "held_out_fraction"),
    ],
)
def test_type_errors_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(ZooConfig, None, [override])


def test_exponent_float_override():
    assert load_config(ZooConfig, None, ["lr=1e-3"]).lr == 0.001


@pytest.mark.parametrize("override", ["epochs", "=3", "epochs.x=1"])
def test_malformed_overrides(override, debug_config_path):
    with pytest.raises(ConfigError):
        load_config(ZooConfig, debug_config_path, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ZooConfig, tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("epochs: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(ZooConfig, tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(ZooConfig, tmp_path / "list.yaml")


def test_only_true_and_false_are_booleans(tmp_path):
    # YAML 1.1 reads no / off / yes as booleans, so a string setting could not be set to "no"
    from weightgen.encoders.training import TokenizerConfig
    from weightgen.generators.training import GeneratorTrainConfig

    path = tmp_path / "g.yaml"
    path.write_text("mixed_precision: no\n")
    assert load_config(GeneratorTrainConfig, path).mixed_precision == "no"
    assert load_config(GeneratorTrainConfig, None, ["mixed_precision=no"]).mixed_precision == "no"
    assert load_config(TokenizerConfig, None, ["canonical=false"]).canonical is False
    with pytest.raises(ConfigError, match="canonical must be bool, got 'yes'"):
        load_config(TokenizerConfig, None, ["canonical=yes"])
