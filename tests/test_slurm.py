"""The pipeline through `snakemake --profile slurm` on a real single-node SLURM cluster started on
this machine (tests/slurm_cluster.py): every rule runs as a SLURM job, training as one srun
step with one process per (stand-in) GPU, and the daemons are stopped afterwards.

Needs root (daemons, apt-get when the packages are missing); skipped otherwise with the reason."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slurm_cluster import PARTITION, LocalSlurm, unavailable_reason
from test_workflow import small_config

REPO = Path(__file__).resolve().parents[1]
DATASET = "bdtnp_drosophila"
TRAIN_TASKS = 2  # processes (stand-in GPUs) of the training job
MODE = "expr_to_pos"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no local SLURM cluster: {reason}")
    slurm = LocalSlurm(tmp_path_factory.mktemp("slurm"), log=lambda m: print(f"[slurm] {m}", file=sys.stderr))
    slurm.start()
    yield slurm
    slurm.stop()
    assert not any(Path(f"/proc/{pid}").exists() and _state(pid) not in ("Z", "X") for pid in slurm.pids().values())


def _state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def test_profile_name_resolves_in_repo_root():
    """`--profile slurm` typed in the repository root finds profiles/slurm (via the ./slurm link)."""
    from snakemake.cli import get_profile_dir

    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        profile_dir, config_file = get_profile_dir("slurm")
    finally:
        os.chdir(cwd)
    assert (REPO / profile_dir).resolve() == (REPO / "profiles/slurm").resolve()
    profile = yaml.safe_load(config_file.read_text())
    assert profile["executor"] == "slurm" and profile["retries"] >= 1
    assert "default-resources" not in profile  # left to the cluster-specific profile


def test_cluster_settings_profile_is_not_overridden_by_workflow_profile():
    """Account/partition in a second profile's default-resources reach every job: the workflow
    profile has no default-resources key that would replace them."""
    workflow_profile = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    assert "default-resources" not in workflow_profile
    rules = set(re.findall(r"^rule (\w+):", "".join(p.read_text() for p in (REPO / "workflow/rules").glob("*.smk")), re.M))
    assert rules - {"all"} <= set(workflow_profile["set-resources"]), "every rule has its resources in the workflow profile"
    train = workflow_profile["set-resources"]["train"]
    assert {"gpu", "nodes", "tasks_per_node"} <= set(train) and workflow_profile["set-resources"]["sample"]["gpu"] == 1


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm-pipeline")
    configfile = small_config(workdir)
    config = yaml.safe_load(configfile.read_text())
    # one dataset, three of its slabs (train, validation, test), one sampling mode, DDP training:
    # the fewest job waves that still run every rule
    spec = config["datasets"][DATASET]
    held_out = set(spec["test_slices"]) | set(spec.get("validation_slices", []))
    files = spec["platforms"]["insitu"]["files"]
    train_file = next(f for f in files if Path(f).stem.removeprefix("bdtnp_") not in held_out)
    spec["platforms"]["insitu"]["files"] = [f for f in files if f == train_file or Path(f).stem.removeprefix("bdtnp_") in held_out]
    config["datasets"] = {DATASET: spec}
    config["sampling"]["modes"] = [MODE]
    config["training"]["strategy"] = "ddp"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))

    # The cluster-specific profile a user would keep outside the repository; for this cluster:
    # its partition, and squeue for job status (no slurmdbd, so no sacct).
    cluster_profile = workdir / "profile-localhost"
    cluster_profile.mkdir()
    (cluster_profile / "config.yaml").write_text(yaml.safe_dump({
        "default-resources": {"slurm_partition": PARTITION},
        "slurm-status-command": "squeue",
        # the plugin polls after s, 2s+10, 3s+30 ... seconds: 6 catches a ~20 s job at 22 s
        "slurm-init-seconds-before-status-checks": 6,
        "slurm-keep-successful-logs": True,
        "retries": 0,
    }))
    # The repository's workflow profile, with training spread over two processes (one srun step,
    # two tasks, two stand-in GPUs) to exercise the multi-GPU launch.
    workflow_profile = workdir / "profile-workflow"
    workflow_profile.mkdir()
    wf = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    wf["set-resources"]["train"].update(mpi="srun", tasks_per_node=TRAIN_TASKS, gpu=TRAIN_TASKS, mem_mb=4000)
    for rule in wf["set-resources"].values():  # the test node has ~2 cores and little memory to spare
        rule["mem_mb"] = min(rule["mem_mb"], 4000)
    (workflow_profile / "config.yaml").write_text(yaml.safe_dump(wf))

    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "workflow/Snakefile"), "--directory", str(workdir),
           "--configfile", str(configfile), "--profile", str(REPO / "profiles/slurm"), "--profile", str(cluster_profile),
           "--workflow-profile", str(workflow_profile), "--jobs", "2"]
    env = dict(cluster.env, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    started = time.monotonic()
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    elapsed = time.monotonic() - started
    print(f"pipeline through SLURM: {elapsed:.0f}s", file=sys.stderr)
    assert result.returncode == 0, result.stderr[-6000:]
    return workdir, config, result.stdout + result.stderr, cluster


def _jobs(cluster):
    """Every job the cluster ran (finished jobs stay listed: MinJobAge=600): id -> (state, rule)."""
    out = cluster.run("squeue", "--states=all", "-h", "-o", "%i|%T|%k").stdout
    jobs = {}
    for line in out.splitlines():
        jobid, state, comment = line.split("|", 2)
        jobs[jobid] = (state, re.match(r"rule_(\w+?)(_wildcards_|$)", comment).group(1))
    return jobs


def test_every_rule_ran_as_a_slurm_job(slurm_run):
    workdir, config, log, cluster = slurm_run
    assert (workdir / "results" / DATASET / "report.html").stat().st_size > 10_000
    assert (workdir / "results/summary.html").exists()

    jobs = _jobs(cluster)
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", log)
    assert submitted, log[-3000:]
    assert {slurm_id for _, slurm_id in submitted} == set(jobs)
    assert all(state == "COMPLETED" for state, _ in jobs.values()), jobs
    n_test = len(config["datasets"][DATASET]["test_slices"])
    n_files = len(config["datasets"][DATASET]["platforms"]["insitu"]["files"])
    expected = {"stage_settings": 2, "gene_list": 1, "preprocess": n_files, "manifest": 1, "train": 1,
                "export_model": 1, "sample": n_test, "evaluate": n_test,
                "gather_metrics": 1, "report": 1, "summary": 1,
                # the small config's one peer that applies here (random in expr_to_pos; domains need cell types)
                "peer": n_test, "evaluate_peer": n_test, "method_runs": 1}
    ran = {}
    for _, rule in jobs.values():
        ran[rule] = ran.get(rule, 0) + 1
    assert ran == expected
    assert "Finished job" in log and "localrule" not in log.replace("localrule all", "")

    # the plugin's per-job logs, one per job, and scontrol's record of each job
    logs = list((workdir / ".snakemake/slurm_logs").rglob("*.log"))
    assert {p.stem for p in logs} == set(jobs)
    for jobid in jobs:
        record = cluster.run("scontrol", "show", "job", jobid).stdout
        assert "JobState=COMPLETED" in record and f"WorkDir={workdir}" in record


def test_training_ran_one_process_per_gpu_under_srun(slurm_run):
    workdir, _, _, cluster = slurm_run
    training = json.loads((workdir / "results" / DATASET / "model/training.json").read_text())
    assert training["world_size"] == TRAIN_TASKS
    assert training["devices"] == TRAIN_TASKS and training["num_nodes"] == 1
    train_log = (workdir / "logs" / DATASET / "train.log").read_text()
    for rank in range(TRAIN_TASKS):
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/{TRAIN_TASKS}" in train_log, train_log[-3000:]
    train_jobs = [jobid for jobid, (_, rule) in _jobs(cluster).items() if rule == "train"]
    record = cluster.run("scontrol", "show", "job", train_jobs[0]).stdout
    assert f"NumTasks={TRAIN_TASKS}" in record or f"NumCPUs={TRAIN_TASKS}" in record, record
    assert re.search(r"gres[/:]gpu[:=]" + str(TRAIN_TASKS), record), record
