"""Typed configuration: defaults, unknown keys, bad values, overrides, and agreement with the
JSON schema that Snakemake validates config/config.yaml against."""

from dataclasses import fields
from pathlib import Path

import jsonschema
import pytest
import yaml

from alphastomics.config import SCHEMA_PATH, Config, apply_overrides, config_from_dict, load_config
from alphastomics.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_bundled_config_is_valid_for_schema_and_dataclasses():
    data = yaml.safe_load((REPO / "config/config.yaml").read_text())
    jsonschema.validate(data, yaml.safe_load(SCHEMA_PATH.read_text()))
    config = config_from_dict(data)
    assert config.training.training_mode == "joint"


def test_schema_sections_match_dataclasses():
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    for section in fields(Config):
        dataclass_keys = {f.name for f in fields(section.default_factory())}
        schema_keys = set(schema["properties"][section.name]["properties"])
        assert schema_keys == dataclass_keys, section.name


def test_workflow_schema_is_the_package_schema():
    assert (REPO / "workflow/schemas/config.schema.yaml").resolve() == SCHEMA_PATH.resolve()


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="model.hiden_dim"):
        config_from_dict({"model": {"hiden_dim": 3}})
    with pytest.raises(ConfigError, match="'modle'"):
        config_from_dict({"modle": {}})


def test_bad_values_are_named():
    with pytest.raises(ConfigError, match="training.training_mode"):
        config_from_dict({"training": {"training_mode": "sideways"}})
    with pytest.raises(ConfigError, match="training.lr"):
        config_from_dict({"training": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="model.moe_top_k"):
        config_from_dict({"model": {"use_moe": True, "num_experts": 2, "moe_top_k": 3}})


def test_yaml_scientific_notation_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  lr: 1e-4\n")
    config = load_config(path)
    assert config.training.lr == pytest.approx(1e-4)
    config = apply_overrides(config, {"training.epochs": 3, "model.use_moe": True, "training.lr": None})
    assert config.training.epochs == 3 and config.model.use_moe and config.training.lr == pytest.approx(1e-4)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
