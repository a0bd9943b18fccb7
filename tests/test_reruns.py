"""Only changed stages re-run (issue 6), checked by the jobs and reasons of a dry run after one
complete run: the small pipeline run the end-to-end tests share (conftest.small_pipeline), which
runs from a copy of the repository (workflow/, alphastomics/, profiles/) with PYTHONPATH on the
copy, so code edits touch the copy, never the package."""

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import anndata as ad
import pytest
import yaml

from test_workflow import MODES, small_config, snakemake_in

DATASET = "starmap_mpfc"  # its gene list is a file: adding an h5ad must not touch the others
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("pipeline")]


@pytest.fixture(scope="module")
def repo_copy(small_pipeline) -> Path:
    return small_pipeline[0]


def run(copy, workdir, configfile, *extra, timeout=1500):
    cmd, env = snakemake_in(copy, workdir, configfile, *extra)
    return subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def complete_run(small_pipeline):
    copy, workdir, configfile = small_pipeline
    return copy, workdir, yaml.safe_load(configfile.read_text(encoding="utf-8"))


def dry_run(complete_run, tmp_path, config=None):
    """Jobs of `snakemake -n` as (rule, outputs, reason) tuples, with the config (changed or not)."""
    copy, workdir, base = complete_run
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config or base, sort_keys=False))
    result = run(copy, workdir, configfile, "-n")
    assert result.returncode == 0, result.stderr[-5000:]
    text = result.stdout + result.stderr
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        m = re.match(r"(?:local)?rule (\w+):", block)
        if m:
            output = re.search(r"^\s+output: (.*)$", block, re.M)
            reason = re.search(r"^\s+reason: (.*)$", block, re.M)
            jobs.append((m.group(1), output.group(1) if output else "", reason.group(1) if reason else ""))
    return jobs, text


def counts(jobs):
    return dict(Counter(rule for rule, _, _ in jobs if rule != "all"))


def edited(path: Path):
    """Context: append a harmless line to a package file of the copy, restore it afterwards."""
    class Edit:
        def __enter__(self):
            self.original = path.read_text()
            path.write_text(self.original + "\n# edited by test_reruns\n")

        def __exit__(self, *exc):
            path.write_text(self.original)
    return Edit()


# The small config: two datasets, one held-out slice each, MODES sampled. Peers: random
# (expr_to_pos) on both, pca (domains) on STARmap only (BDTNP has no cell types).
N_DATASETS = 2
N_SAMPLES = N_DATASETS * len(MODES)
DOWNSTREAM_OF_SAMPLES = {"evaluate": N_SAMPLES, "gather_metrics": N_DATASETS, "report": N_DATASETS, "summary": 1}
PEER_SCORES = {"evaluate_peer": 3}
# the table of method runs reads the sample jobs' benchmark files
RUNS_TABLE = {"method_runs": N_DATASETS}
PEER_RUNS = {"peer": 3, **PEER_SCORES}


def stages_running(copy: Path, name: str) -> set[str]:
    """Stages whose code includes package file ``name`` (alphastomics.stages, on the copy; that
    these are exactly the stages a dry run re-plans is tests/test_fingerprints.py's check)."""
    from alphastomics.stages import StageFiles

    files = StageFiles(copy / "alphastomics")
    return {stage for stage in ("train", "export", "sample", "peer") if Path(name) in files.files(stage)}


def reruns_of_model_code(copy: Path, name: str) -> dict[str, int]:
    """Jobs an edit to ``name`` re-runs, for code that sampling runs: training where the training
    stage imports it, export, sampling and everything after, the peers where they import it."""
    stages = stages_running(copy, name)
    assert {"export", "sample"} <= stages, stages
    return {**({"train": N_DATASETS} if "train" in stages else {}), "export_model": N_DATASETS, "sample": N_SAMPLES,
            **DOWNSTREAM_OF_SAMPLES, **RUNS_TABLE, **(PEER_RUNS if "peer" in stages else {})}


def test_1_complete_run_leaves_nothing_to_do(complete_run, tmp_path):
    jobs, text = dry_run(complete_run, tmp_path)
    assert jobs == [] and "Nothing to be done" in text, text[-3000:]


def test_2_sampling_parameter_reruns_sampling_evaluation_report(complete_run, tmp_path):
    config = json.loads(json.dumps(complete_run[2]))
    config["sampling"]["steps"] = 5
    jobs, text = dry_run(complete_run, tmp_path, config)
    assert counts(jobs) == {"sample": N_SAMPLES, **DOWNSTREAM_OF_SAMPLES, **RUNS_TABLE}, text[-3000:]
    assert all("Params have changed" in reason for rule, _, reason in jobs if rule == "sample")


def test_3a_metric_parameter_reruns_evaluation_report(complete_run, tmp_path):
    config = json.loads(json.dumps(complete_run[2]))
    config["evaluation"]["knn_k"] = [5]
    jobs, text = dry_run(complete_run, tmp_path, config)
    # stage_settings rewrites the evaluation settings file the evaluate jobs read
    assert counts(jobs) == {"stage_settings": N_DATASETS, **DOWNSTREAM_OF_SAMPLES, **PEER_SCORES}, text[-3000:]
    assert sorted(out for rule, out, _ in jobs if rule == "stage_settings") == [
        f"results/{dataset}/settings/evaluate.yaml" for dataset in sorted(complete_run[2]["datasets"])]


def test_3b_metrics_code_edit_reruns_evaluation_report(complete_run, tmp_path):
    copy = complete_run[0]
    module = sorted((copy / "alphastomics/metrics").glob("*.py"))[-1]
    with edited(module):
        jobs, text = dry_run(complete_run, tmp_path)
    assert counts(jobs) == {**DOWNSTREAM_OF_SAMPLES, **PEER_SCORES}, text[-3000:]
    assert all("Params have changed" in reason for rule, _, reason in jobs if rule == "evaluate")


def test_3c_model_code_edit_reruns_training_onward(complete_run, tmp_path):
    copy = complete_run[0]
    module = sorted((copy / "alphastomics/model").glob("*.py"))[-1]
    with edited(module):
        jobs, text = dry_run(complete_run, tmp_path)
    assert "train" in stages_running(copy, f"model/{module.name}")
    assert counts(jobs) == reruns_of_model_code(copy, f"model/{module.name}"), text[-3000:]
    assert [reason for rule, _, reason in jobs if rule == "train"][0].startswith("Params have changed")


def test_3d_sampling_code_edit_reruns_export_and_sampling_onward(complete_run, tmp_path):
    """guidance.py sets every draw's condition codes; an edit there once re-ran nothing."""
    copy = complete_run[0]
    with edited(copy / "alphastomics/guidance.py"):
        jobs, text = dry_run(complete_run, tmp_path)
    assert counts(jobs) == reruns_of_model_code(copy, "guidance.py"), text[-3000:]


def test_4_new_h5ad_file_preprocesses_only_that_file(complete_run, tmp_path):
    config = json.loads(json.dumps(complete_run[2]))
    files = config["datasets"][DATASET]["platforms"]["starmap"]["files"]
    adata = ad.read_h5ad(files[0])
    adata.obs["slice_id"] = "new_section"
    new_file = tmp_path / "starmap_mpfc_new_section.h5ad"
    adata.write_h5ad(new_file)
    files.append(str(new_file))
    jobs, text = dry_run(complete_run, tmp_path, config)
    # that dataset only: one held-out slice, its modes, its two peers
    assert counts(jobs) == {"preprocess": 1, "manifest": 1, "train": 1, "export_model": 1, "sample": len(MODES),
                            "evaluate": len(MODES), "gather_metrics": 1, "report": 1, "summary": 1, "peer": 2,
                            "evaluate_peer": 2, "method_runs": 1}, text[-3000:]
    assert [out for rule, out, _ in jobs if rule == "preprocess"] == [
        f"results/{DATASET}/shards/starmap/starmap_mpfc_new_section.manifest.json"]


def test_5_killed_training_job_is_retried_and_resumes_from_last_checkpoint(repo_copy, tmp_path):
    """A training job killed mid-way (as a pre-empted job) is retried by Snakemake (--retries, as
    in the slurm profile) and continues from checkpoints/last.ckpt, not from scratch."""
    import torch

    configfile = small_config(tmp_path)
    config = yaml.safe_load(configfile.read_text())
    config["datasets"] = {"bdtnp_drosophila": config["datasets"]["bdtnp_drosophila"]}
    config["training"].update(epochs=40, examples_per_epoch=2, val_every_n_epochs=1)
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    model = tmp_path / "results/bdtnp_drosophila/model"
    cmd, env = snakemake_in(repo_copy, tmp_path, configfile, "--retries", "1", "results/bdtnp_drosophila/model/training.json")
    proc = subprocess.Popen(cmd, cwd=repo_copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        last = model / "checkpoints/last.ckpt"
        deadline = time.monotonic() + 600
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert last.exists(), "training wrote no checkpoint:\n" + (proc.communicate()[0] if proc.poll() is not None else "")[-5000:]
        trainer = _training_process(proc.pid)
        os.kill(trainer, signal.SIGKILL)  # the job dies mid-way, as a pre-empted job would
        time.sleep(1)
        killed_at = torch.load(last, map_location="cpu", weights_only=False)["epoch"]
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(60)
    assert proc.returncode == 0, output[-5000:]
    assert "Trying to restart job" in output or "attempt" in output.lower()
    assert 0 <= killed_at < config["training"]["epochs"] - 1, killed_at
    training = json.loads((model / "training.json").read_text())
    assert training["resumed_from"] and training["resumed_from"].endswith("checkpoints/last.ckpt")
    assert training["epochs"] >= config["training"]["epochs"] - 1
    assert training.get("start_step", 0) > 0, training  # the retry started from a trained step, not 0
    log = (tmp_path / "logs/bdtnp_drosophila/train.log").read_text()
    assert "resuming from" in log and "Restored all states from the checkpoint" in log, log[-3000:]


def _training_process(session: int) -> int:
    """pid of the `alphastomics train` process in the session of the snakemake run."""
    for _ in range(50):
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().split(b"\0")
                sid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[3])
            except (OSError, ValueError, IndexError):
                continue
            if sid == session and b"train" in cmdline and any(a.endswith(b"alphastomics") for a in cmdline):
                return int(proc.name)
        time.sleep(0.1)
    raise AssertionError("no `alphastomics train` process found")
