"""The whole Snakemake workflow on the bundled real data with a small model, and the errors a
user meets first (missing file, missing obsm key, unknown config key)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow/Snakefile")]
MODES = ["expr_to_pos", "pos_to_expr", "joint"]

SMALL_SETTINGS = {
    "model": {"hidden_dim": 32, "num_layers": 2, "num_heads": 4},
    "diffusion": {"diffusion_steps": 20},
    "training": {"epochs": 2, "examples_per_epoch": 2, "val_every_n_epochs": 1},
    "sampling": {"modes": MODES, "steps": 0, "seed": 0},
    "evaluation": {"knn_k": [5, 10], "seed": 0},
}


def small_config(workdir: Path) -> Path:
    """The bundled config with absolute data paths and a model small enough for CI."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for spec in config["datasets"].values():
        for platform in spec["platforms"].values():
            platform["files"] = [str(REPO / f) for f in platform["files"]]
        if spec["gene_list"] not in ("intersection", "union"):
            spec["gene_list"] = str(REPO / spec["gene_list"])
    config.update(SMALL_SETTINGS)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_snakemake(workdir: Path, configfile: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(
        [*SNAKEMAKE, "--directory", str(workdir), "--configfile", str(configfile), "--cores", "2", *extra],
        capture_output=True, text=True, env=env, timeout=1500,
    )


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pipeline")
    configfile = small_config(workdir)
    result = run_snakemake(workdir, configfile)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir, configfile


@pytest.mark.slow
def test_pipeline_produces_reports_and_finite_metrics(pipeline_run):
    workdir, configfile = pipeline_run
    config = yaml.safe_load(configfile.read_text())
    assert (workdir / "results/summary.html").stat().st_size > 0
    for dataset, spec in config["datasets"].items():
        report = workdir / "results" / dataset / "report.html"
        assert report.stat().st_size > 10_000
        html = report.read_text()
        assert "<script src=" not in html and "data:image" in html  # self-contained
        metrics = pd.read_csv(workdir / "results" / dataset / "metrics.tsv", sep="\t")
        assert list(metrics.columns[:6]) == ["dataset", "slice", "mode", "method", "metric", "value"]
        for slice_id in spec["test_slices"]:
            for mode in MODES:
                rows = metrics[(metrics["slice"] == slice_id) & (metrics["mode"] == mode)]
                assert len(rows) > 0, (dataset, slice_id, mode)
                headline = {
                    "expr_to_pos": "distance_spearman_median",
                    "pos_to_expr": "expr_mse",
                    "joint": "procrustes_disparity",
                }[mode]
                value = rows.set_index("metric")["value"].get(headline)
                assert value is not None and math.isfinite(value), (dataset, slice_id, mode, headline)
                assert rows["value"].map(lambda v: math.isfinite(v)).mean() > 0.8
        assert (workdir / "logs" / dataset / "train.log").exists()


@pytest.mark.slow
def test_rerun_has_nothing_to_do(pipeline_run):
    workdir, configfile = pipeline_run
    result = run_snakemake(workdir, configfile, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr


def test_missing_input_file_is_named(tmp_path):
    configfile = small_config(tmp_path)
    config = yaml.safe_load(configfile.read_text())
    config["datasets"]["starmap_mpfc"]["platforms"]["starmap"]["files"][0] = "resources/does_not_exist.h5ad"
    configfile.write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, configfile, "-n")
    assert result.returncode != 0
    assert "input file not found: resources/does_not_exist.h5ad" in result.stdout + result.stderr


def test_unknown_config_key_is_named(tmp_path):
    configfile = small_config(tmp_path)
    config = yaml.safe_load(configfile.read_text())
    config["model"]["hiden_dim"] = 64
    configfile.write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, configfile, "-n")
    assert result.returncode != 0
    assert "hiden_dim" in result.stdout + result.stderr


def test_missing_obsm_key_stops_preprocessing_and_leaves_no_output(tmp_path):
    configfile = small_config(tmp_path)
    config = yaml.safe_load(configfile.read_text())
    del config["datasets"]["bdtnp_drosophila"]
    config["datasets"]["starmap_mpfc"]["platforms"]["starmap"]["position_key"] = "X_umap"
    configfile.write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, configfile, "results/starmap_mpfc/manifest.json")
    assert result.returncode != 0
    logs = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*.log"))
    assert "X_umap" in logs and "spatial" in logs  # names the missing key and lists those present
    shards = tmp_path / "results/starmap_mpfc/shards"
    leftovers = [p for p in shards.rglob("*") if p.is_file()] if shards.exists() else []
    assert leftovers == []


def test_per_file_z_value_reaches_only_that_files_preprocessing(tmp_path):
    configfile = small_config(tmp_path)
    config = yaml.safe_load(configfile.read_text())
    platform = config["datasets"]["starmap_mpfc"]["platforms"]["starmap"]
    bz9 = next(f for f in platform["files"] if "BZ9" in f)
    platform["z_values"] = {bz9: 12.5}
    configfile.write_text(yaml.safe_dump(config))
    result = run_snakemake(tmp_path, configfile, "results/starmap_mpfc/manifest.json", "-n", "-p")
    assert result.returncode == 0, result.stdout[-3000:]
    commands = [line for line in result.stdout.splitlines() if "alphastomics preprocess" in line]
    assert len(commands) == 3
    for command in commands:
        assert ("--z-value 12.5" in command) == ("BZ9" in command.split("--platform")[0])
