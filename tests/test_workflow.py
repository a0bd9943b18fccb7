"""The whole Snakemake workflow on the bundled real data with a small model, and the errors a
user meets first (missing file, missing obsm key, unknown config key)."""

import html
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MODES = ["expr_to_pos", "pos_to_expr", "joint"]

SMALL_SETTINGS = {
    "model": {"hidden_dim": 32, "num_layers": 2, "num_heads": 4},
    "diffusion": {"diffusion_steps": 20},
    "training": {"epochs": 2, "examples_per_epoch": 2, "val_every_n_epochs": 1},
    "sampling": {"modes": MODES, "steps": 0, "seed": 0},
    "evaluation": {"knn_k": [5, 10], "seed": 0},
    # the fastest peers: the machinery (status records, benchmark files, method columns), not the methods
    "methods": {"expr_to_pos": ["random"], "domains": ["pca"], "time_limit_s": 120},
}


# Issue 10: a user's own slice names, in a folder with a space in its name. The STARmap dataset of
# the small config is made of copies of the bundled files with these ids in obs['slice_id'], so the
# one shared pipeline run below carries them through every stage.
STARMAP_SLICE_NAMES = {"BZ5": "mouse 5 bregma1.5", "BZ9": "mouse 9 bregma1.7", "BZ14": "mäus 14 bregma2.0"}
STARMAP_TEST_SLICE = STARMAP_SLICE_NAMES["BZ14"]
STARMAP_FOLDER = "star map data"


def starmap_with_user_slice_names(folder: Path) -> list[str]:
    """Copies of the bundled STARmap files in ``folder``, obs['slice_id'] renamed (see above)."""
    import anndata as ad

    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for source in sorted((REPO / "resources/starmap_mpfc").glob("*.h5ad")):
        name = next(v for k, v in STARMAP_SLICE_NAMES.items() if f"_{k}_" in source.name)
        adata = ad.read_h5ad(source)
        adata.obs["slice_id"] = pd.Categorical([name] * adata.n_obs)
        adata.write_h5ad(folder / source.name)
        copies.append(str(folder / source.name))
    return copies


def small_config(workdir: Path) -> Path:
    """The bundled config with absolute data paths and a model small enough for CI; STARmap slices
    carry the user-style names above and live in a folder with a space."""
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for spec in config["datasets"].values():
        for platform in spec["platforms"].values():
            platform["files"] = [str(REPO / f) for f in platform["files"]]
        if spec["gene_list"] not in ("intersection", "union"):
            spec["gene_list"] = str(REPO / spec["gene_list"])
    starmap = config["datasets"]["starmap_mpfc"]
    starmap["platforms"]["starmap"]["files"] = starmap_with_user_slice_names(workdir / STARMAP_FOLDER)
    starmap["test_slices"] = [STARMAP_TEST_SLICE]
    config.update(SMALL_SETTINGS)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def edit_config(configfile: Path, edit) -> dict:
    """Apply ``edit(config)`` to a config file in place; return the edited config."""
    config = yaml.safe_load(configfile.read_text(encoding="utf-8"))
    edit(config)
    configfile.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return config


def snakemake_in(copy: Path, workdir: Path, configfile: Path, *extra: str) -> tuple[list[str], dict]:
    """(command, environment) of snakemake on a copy of the repository's workflow and package, with
    the copy's workflow profile when run from the copy."""
    env = dict(os.environ, PYTHONPATH=str(copy), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(copy / "workflow/Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--cores", "2", *extra]
    return cmd, env


def run_snakemake(workdir: Path, configfile: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd, env = snakemake_in(REPO, workdir, configfile, *extra)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)


# test_workflow and test_reruns share one pipeline run (conftest.small_pipeline): one xdist worker
pytestmark = pytest.mark.xdist_group("pipeline")


@pytest.fixture(scope="module")
def pipeline_run(small_pipeline):
    _, workdir, configfile = small_pipeline
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
                mine = rows[rows["method"] == "alphastomics"].set_index("metric")["value"]
                headlines = {
                    "expr_to_pos": ["distance_spearman_median", "extent_ratio_worst"],
                    "pos_to_expr": ["expr_mse", "expr_mean_mse", "expr_zero_fraction_abs_diff"],
                    "joint": ["expr_energy_distance_pca", "extent_ratio_worst"],
                }[mode]
                for headline in headlines:
                    value = mine.get(headline)
                    assert value is not None and math.isfinite(value), (dataset, slice_id, mode, headline)
                assert rows["value"].map(lambda v: math.isfinite(v)).mean() > 0.8
                if mode == "joint":  # no per-cell metric; real training slices as reference rows
                    assert "procrustes_disparity" not in mine and "expr_mse" not in mine
                    assert rows["method"].str.startswith("real:").any()
                if mode == "pos_to_expr":
                    assert (rows["method"] == "training_mean").any()
                if mode == "expr_to_pos":  # peers are scored on the same slice beside AlphaSTomics
                    peer = rows[rows["method"] == "random"].set_index("metric")["value"]
                    assert math.isfinite(peer["knn_preservation_k10"]) and peer["knn_preservation_k10"] < mine["knn_preservation_k10"] + 0.5
        runs = pd.read_csv(workdir / "results" / dataset / "methods.tsv", sep="\t")
        assert {"alphastomics", "random"} <= set(runs["method"]) and (runs["wall_s"] > 0).all()
        assert "random" in html and "wall time" in html
        assert (workdir / "logs" / dataset / "train.log").exists()


@pytest.mark.slow
def test_user_slice_names_in_a_folder_with_a_space_reach_report_and_summary(pipeline_run):
    """Issue 10, done-when: ids with spaces, dots and an umlaut, files in a folder with a space."""
    from alphastomics.io.names import slice_file_key

    workdir, _ = pipeline_run
    results = workdir / "results/starmap_mpfc"
    manifest = json.loads((results / "manifest.json").read_text(encoding="utf-8"))
    assert set(manifest["slices"]) == set(STARMAP_SLICE_NAMES.values())
    assert all(STARMAP_FOLDER in entry["source"] for entry in manifest["slices"].values())
    key = slice_file_key(STARMAP_TEST_SLICE)
    assert manifest["slices"][STARMAP_TEST_SLICE]["file_key"] == key
    assert sorted(p.name for p in (results / "samples").iterdir()) == sorted(f"{key}.{mode}.h5ad" for mode in MODES)
    report = (results / "report.html").read_text(encoding="utf-8")
    for name in STARMAP_SLICE_NAMES.values():
        assert html.escape(name) in report, name
    assert f"{html.escape(STARMAP_TEST_SLICE)} · expr_to_pos" in report  # figure titles use the user's name
    summary = (workdir / "results/summary.html").read_text(encoding="utf-8")
    assert html.escape(STARMAP_TEST_SLICE) in summary


@pytest.mark.slow
def test_summary_links_every_dataset_report(pipeline_run):
    workdir, configfile = pipeline_run
    summary = (workdir / "results/summary.html").read_text(encoding="utf-8")
    for dataset in yaml.safe_load(configfile.read_text(encoding="utf-8"))["datasets"]:
        assert f'href="{dataset}/report.html"' in summary, dataset


def _documented_paths() -> list[str]:
    """Paths of the layout table in docs/FORMATS.md, placeholders as globs."""
    text = (REPO / "docs/FORMATS.md").read_text(encoding="utf-8")
    table = text.split("## Layout under `results/<dataset>/`", 1)[1].split("\n\n", 2)[1]
    paths = []
    for row in table.splitlines()[2:]:
        first_cell = row.split("|")[1]
        paths += [re.sub(r"<[a-z_]+>", "*", p) for p in re.findall(r"`([^`]+)`", first_cell)]
    return paths


@pytest.mark.slow
def test_every_path_of_the_documented_layout_is_made_by_the_pipeline(pipeline_run):
    workdir, _ = pipeline_run
    results = workdir / "results/starmap_mpfc"
    paths = _documented_paths()
    assert len(paths) > 10 and "metrics/*.*.tsv" in paths and "model/model.ckpt" in paths
    for pattern in paths:
        assert list(results.glob(pattern.rstrip("/"))), pattern
    for name in ("last.ckpt", "resume_key.txt"):
        assert (results / "model/checkpoints" / name).exists(), name
    assert list((results / "model/logs").rglob("metrics.csv"))
    doc = (REPO / "docs/FORMATS.md").read_text(encoding="utf-8")
    assert "metrics/<slice>.<mode>.tsv" in doc.split("```")[1] and ".metrics.tsv" not in doc  # the flow at the top
    [model_row] = [row for row in doc.splitlines() if row.startswith("| `model/model.ckpt`")]
    assert "export_model" in model_row  # the pipeline's model file comes from the export rule


def test_summary_job_depends_on_the_dataset_reports(tmp_path):
    """The summary links each dataset's report, so it must run after them, not whenever it may."""
    configfile = small_config(tmp_path)
    result = run_snakemake(tmp_path, configfile, "results/summary.html", "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = result.stdout + result.stderr
    for dataset in yaml.safe_load(configfile.read_text(encoding="utf-8"))["datasets"]:
        assert f"results/{dataset}/report.html" in jobs, dataset


def _printed_commands(result: subprocess.CompletedProcess, program: str) -> list[list[str]]:
    """Shell commands of a `snakemake -n -p` run that call ``alphastomics <program>``, split as a shell would."""
    commands = []
    for line in result.stdout.splitlines():
        if "alphastomics" not in line:
            continue
        tokens = shlex.split(line)
        for start, token in enumerate(tokens):
            if token == "alphastomics":
                rest = tokens[start + 1:]
                while rest[:1] == ["--threads"]:  # the global option before the sub-command
                    rest = rest[2:]
                if rest[:1] == [program]:
                    commands.append(tokens)
                    break
    return commands


def _argument(tokens: list[str], flag: str) -> list[str]:
    """Values following ``flag`` up to the next option or redirection."""
    start = tokens.index(flag) + 1
    values = []
    for token in tokens[start:]:
        if token.startswith("--") or token in (">", "2>&1"):
            break
        values.append(token)
    return values


def test_config_values_reach_commands_as_single_quoted_arguments(tmp_path):
    """Paths with spaces and values with ';' stay one argument each; nothing runs as a command."""
    configfile = small_config(tmp_path)
    genes = tmp_path / "my genes" / "gene list.txt"
    genes.parent.mkdir()
    genes.write_text((REPO / "resources/starmap_mpfc/genes.txt").read_text())
    injected = "cell_type; touch INJECTED"

    def edit(config):
        config["datasets"]["starmap_mpfc"]["gene_list"] = str(genes)
        config["datasets"]["starmap_mpfc"]["platforms"]["starmap"]["cell_type_key"] = injected
        config["datasets"]["starmap_mpfc"]["validation_slices"] = [STARMAP_SLICE_NAMES["BZ9"]]

    config = edit_config(configfile, edit)
    result = run_snakemake(tmp_path, configfile, "-n", "-p")
    assert result.returncode == 0, result.stderr[-3000:]
    files = config["datasets"]["starmap_mpfc"]["platforms"]["starmap"]["files"]
    preprocess = [c for c in _printed_commands(result, "preprocess") if "--dataset" in c and "starmap_mpfc" in c]
    assert len(preprocess) == 3
    for tokens in preprocess:
        assert tokens[tokens.index("preprocess") + 1] in files  # the path with a space is one argument
        assert _argument(tokens, "--cell-type-key") == [injected]
        assert _argument(tokens, "--gene-list") == ["results/starmap_mpfc/genes.txt"]
    [gene_list] = [c for c in _printed_commands(result, "gene-list") if "results/starmap_mpfc/genes.txt" in c]
    assert _argument(gene_list, "--mode") == [str(genes)]
    [train] = [c for c in _printed_commands(result, "train") if "results/starmap_mpfc" in c]
    assert _argument(train, "--test-slices") == [STARMAP_TEST_SLICE]
    assert _argument(train, "--val-slices") == [STARMAP_SLICE_NAMES["BZ9"]]
    samples = [c for c in _printed_commands(result, "sample") if "results/starmap_mpfc" in c]
    assert len(samples) == len(MODES) and all(_argument(c, "--slice") == [STARMAP_TEST_SLICE] for c in samples)
    assert not (tmp_path / "INJECTED").exists() and not (REPO / "INJECTED").exists()


def test_the_full_size_config_passes_the_schema_and_samples_every_diffusion_step(tmp_path):
    """config/full.yaml laid over the bundled config, as the README runs it on a GPU."""
    configfile = small_config(tmp_path)
    result = run_snakemake(tmp_path, configfile, "-n", "-p", "--configfile", str(configfile), str(REPO / "config/full.yaml"))
    assert result.returncode == 0, result.stderr[-3000:]
    samples = {_argument(c, "--mode")[0]: c for c in _printed_commands(result, "sample") if "results/starmap_mpfc" in c}
    assert set(samples) == set(MODES)
    assert all(_argument(c, "--steps") == ["0"] for c in samples.values())  # 0: all 1,000 (alphastomics.checkpoint)
    assert _argument(samples["expr_to_pos"], "--num-samples") == ["32"] and _argument(samples["joint"], "--num-samples") == ["4"]


def test_slice_named_in_config_but_in_no_file_stops_before_any_job(tmp_path):
    configfile = small_config(tmp_path)
    edit_config(configfile, lambda c: c["datasets"]["starmap_mpfc"].update(
        test_slices=[STARMAP_TEST_SLICE, "mouse 7 bregma9.9"], validation_slices=["20180419_BZ9_control"]))
    result = run_snakemake(tmp_path, configfile)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "starmap_mpfc" in message and "'mouse 7 bregma9.9'" in message and "'20180419_BZ9_control'" in message
    for name in STARMAP_SLICE_NAMES.values():  # the slices that do exist are listed
        assert repr(name) in message, name
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


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
