"""Typed configuration: defaults, unknown keys, bad values, overrides, and agreement with the
JSON schema that Snakemake validates config/config.yaml against."""

import re
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


# -- every section validates its values (issue 10): outside Snakemake a bad value used to end in a
# raw numpy error (contact_quantiles: [1.5]) or a ZeroDivisionError (num_heads: 0)
BAD_VALUES = [
    ("evaluation", "contact_quantiles", [1.5]),
    ("evaluation", "contact_quantiles", [0.0]),
    ("evaluation", "knn_k", [0]),
    ("evaluation", "knn_k", [5, 2.5]),
    ("evaluation", "knn_k", ["ten"]),
    ("evaluation", "morans_k", 0),
    ("evaluation", "max_cells_exact", 1),
    ("evaluation", "sample_size", 2),
    ("evaluation", "leiden_resolution", 0),
    ("loss", "lambda_expression", -1),
    ("loss", "lambda_position", -0.5),
    ("loss", "exact_distance_max_cells", 1),
    ("loss", "distance_knn", 0),
    ("loss", "distance_random_pairs_per_cell", 0),
    ("model", "num_heads", 0),
    ("model", "hidden_dim", 4),
    ("model", "num_layers", 0),
    ("model", "dropout", 1.5),
    ("model", "num_experts", 0),
    ("model", "moe_aux_loss_weight", -1),
    ("masking", "lambda_masked_reconstruction", -1),
    ("training", "epochs", 0),
    ("training", "devices", 0),
    ("training", "num_nodes", 0),
    ("training", "val_every_n_epochs", 0),
    ("training", "examples_per_epoch", -1),
    ("training", "cells_per_example", 1),
    ("training", "weight_decay", -0.1),
    ("training", "grad_clip", -1),
    ("training", "num_workers", -1),
    ("sampling", "steps", -1),
    ("sampling", "modes", []),
    ("sampling", "joint_num_samples", 0),
    ("sampling", "expression_temperature", 0),
]


@pytest.mark.parametrize("section,key,value", BAD_VALUES, ids=[f"{s}.{k}={v}" for s, k, v in BAD_VALUES])
def test_every_bad_value_is_refused_naming_its_key(section, key, value):
    with pytest.raises(ConfigError, match=re.escape(f"{section}.{key}")):
        config_from_dict({section: {key: value}})


def test_joint_draws_its_own_number_of_tissues(tmp_path):
    """A joint draw is a whole tissue kept in the sample file: its count is sampling.joint_num_samples,
    not the expr_to_pos draws of sampling.num_samples, in the package and in the pipeline's sample rule
    (which also passes the config's expression temperature and the smoothing over given expression on,
    per mode)."""
    sampling = config_from_dict({"sampling": {"num_samples": 32, "joint_num_samples": 3}}).sampling
    assert sampling.draws("joint") == 3 and sampling.draws("expr_to_pos") == sampling.draws("pos_to_expr") == 32
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config["sampling"].update(num_samples=6, joint_num_samples=2, expression_temperature=0.7, layout_smoothing_steps=7,
                              expression_graph_neighbours=12)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    import subprocess

    dry_run = subprocess.run(["snakemake", "-n", "-p", "--configfile", str(tmp_path / "config.yaml"), "--forceall",
                              "results/starmap_mpfc/samples/20180424_BZ14_control.joint.h5ad",
                              "results/starmap_mpfc/samples/20180424_BZ14_control.expr_to_pos.h5ad"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert dry_run.returncode == 0, dry_run.stderr
    commands = [line for line in dry_run.stdout.splitlines() if " sample --checkpoint" in line]
    by_mode = {m: next(c for c in commands if f"--mode {m}" in c) for m in ("joint", "expr_to_pos")}
    assert "--num-samples 2 " in by_mode["joint"] and "--num-samples 6 " in by_mode["expr_to_pos"]
    assert all("--expression-temperature 0.7 " in command for command in by_mode.values())
    assert "--smoothing-steps 7 " in by_mode["expr_to_pos"] and "--smoothing-steps 0 " in by_mode["joint"]
    assert all("--graph-neighbours 12 " in command for command in by_mode.values())


def _violations(rule: dict):
    """Values that break one numeric schema rule (as Snakemake would refuse them)."""
    if "minimum" in rule:
        yield rule["minimum"] - 1
    if "exclusiveMinimum" in rule:
        yield rule["exclusiveMinimum"]
    if "maximum" in rule:
        yield rule["maximum"] + 1
    if "exclusiveMaximum" in rule:
        yield rule["exclusiveMaximum"]


def test_the_dataclasses_refuse_whatever_the_schema_refuses():
    """Every bound of the schema holds for `alphastomics train/evaluate` too, so a field added to
    both is validated outside Snakemake without a second copy of its bounds."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    checked = 0
    for section in fields(Config):
        for key, rule in schema["properties"][section.name]["properties"].items():
            item_rule = rule.get("items", {}) if rule.get("type") == "array" else None
            for bad in _violations(item_rule if item_rule is not None else rule):
                value = [bad] if item_rule is not None else bad
                if isinstance(getattr(section.default_factory(), key), int) and not isinstance(bad, int):
                    continue
                with pytest.raises(ConfigError, match=re.escape(f"{section.name}.{key}")):
                    config_from_dict({section.name: {key: value}})
                checked += 1
    assert checked > 30


def test_evaluate_with_a_bad_config_value_stops_with_the_key_not_a_traceback(tmp_path, capsys):
    from alphastomics.cli import main as cli

    config = tmp_path / "bad.yaml"
    config.write_text("evaluation:\n  contact_quantiles: [1.5]\n")
    assert cli(["evaluate", str(tmp_path / "sample.h5ad"), "--config", str(config), "--out", str(tmp_path / "m.tsv")]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "evaluation.contact_quantiles" in err and "Traceback" not in err


def test_training_length_benchmark_variants_are_valid_training_settings(monkeypatch):
    """benchmarks/training_length.py trains each variant from the settings it writes: the demo's with
    the run's length and seed, or config/full.yaml's model laid over them with a warm-up that fits."""
    import importlib.util

    benchmarks = REPO / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # as when run as a script: its helpers sit beside it
    spec = importlib.util.spec_from_file_location("training_length", benchmarks / "training_length.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    bundled = yaml.safe_load((REPO / "config/config.yaml").read_text())
    demo = {k: bundled[k] for k in ("model", "diffusion", "loss", "masking", "training")}
    full_yaml = yaml.safe_load((REPO / "config/full.yaml").read_text())

    short = config_from_dict(bench.variant_settings(demo, full_yaml, "demo", 3000, 2))
    assert (short.training.max_steps, short.training.seed) == (3000, 2)
    assert short.model.hidden_dim == demo["model"]["hidden_dim"]
    assert short.diffusion.diffusion_steps == demo["diffusion"]["diffusion_steps"]

    full = config_from_dict(bench.variant_settings(demo, full_yaml, "full", 3600, 0))
    assert full.model.hidden_dim == full_yaml["model"]["hidden_dim"] != demo["model"]["hidden_dim"]
    assert full.model.num_layers == full_yaml["model"]["num_layers"]
    assert full.diffusion.diffusion_steps == full_yaml["diffusion"]["diffusion_steps"]
    assert full.training.max_steps == 3600 and full.training.warmup_steps == 360  # full.yaml's 1,000 would outlast a tenth
    assert full.training.lr == full_yaml["training"]["lr"]
    assert demo["training"]["max_steps"] != 3600  # the demo's own settings were not changed in place
