"""Shared fixtures: real bundled data preprocessed once per test session."""

import os
from pathlib import Path

import pytest

from alphastomics.cli import main as cli

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one thread each (torch here, OpenMP in the subprocesses they start)
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
STARMAP = sorted((REPO / "resources/starmap_mpfc").glob("*.h5ad"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small networks train fastest on one thread (and the suite shares 2 cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

BDTNP = sorted((REPO / "resources/bdtnp_drosophila").glob("*.h5ad"))


def preprocess_dataset(out: Path, files: list[Path], platform: str, dataset: str, *options: str) -> Path:
    """Run the same commands as the workflow: gene list, one preprocess per file, merged manifest."""
    out.mkdir(parents=True, exist_ok=True)
    assert cli(["gene-list", *map(str, files), "--mode", "intersection", "--out", str(out / "genes.txt")]) == 0
    manifests = []
    for f in files:
        manifest = out / "shards" / platform / f"{f.stem}.manifest.json"
        args = ["preprocess", str(f), "--platform", platform, "--dataset", dataset, "--gene-list", str(out / "genes.txt"),
                "--out", str(out / "shards" / platform), "--manifest", str(manifest), *options]
        assert cli(args) == 0
        manifests.append(str(manifest))
    assert cli(["manifest", *manifests, "--dataset", dataset, "--out", str(out / "manifest.json")]) == 0
    return out


@pytest.fixture(scope="session")
def starmap_dir(tmp_path_factory) -> Path:
    """STARmap mPFC, 3 real 2D slices with cell types, preprocessed into shards."""
    return preprocess_dataset(tmp_path_factory.mktemp("starmap"), STARMAP, "starmap", "starmap_mpfc",
                              "--slice-key", "slice_id", "--cell-type-key", "cell_type")


@pytest.fixture(scope="session")
def bdtnp_dir(tmp_path_factory) -> Path:
    """BDTNP embryo, 4 real 3D slabs, preprocessed into shards."""
    return preprocess_dataset(tmp_path_factory.mktemp("bdtnp"), BDTNP, "insitu", "bdtnp_drosophila",
                              "--slice-key", "slice_id", "--normalization", "none")


SMALL_MODEL = {
    "model": {"hidden_dim": 32, "num_layers": 2, "num_heads": 4},
    "diffusion": {"diffusion_steps": 20},
    "training": {"epochs": 2, "examples_per_epoch": 2, "val_every_n_epochs": 1, "accelerator": "cpu"},
}


@pytest.fixture(scope="session")
def small_models(starmap_dir, bdtnp_dir, tmp_path_factory):
    """Small models trained for a few steps: STARmap (per-slice frame, BZ14 held out) and BDTNP
    (shared frame, slab2 held out): (model file, dataset directory, held-out slice)."""
    from alphastomics.config import config_from_dict
    from alphastomics.train import train

    tmp = tmp_path_factory.mktemp("small_models")
    config = config_from_dict(SMALL_MODEL)
    train(config, starmap_dir, tmp / "starmap", test_ids=["20180424_BZ14_control"], export_to=tmp / "starmap.ckpt")
    train(config, bdtnp_dir, tmp / "bdtnp", test_ids=["slab2"], export_to=tmp / "bdtnp.ckpt", coordinate_frame="shared")
    return {"starmap": (tmp / "starmap.ckpt", starmap_dir, "20180424_BZ14_control"), "bdtnp": (tmp / "bdtnp.ckpt", bdtnp_dir, "slab2")}


@pytest.fixture(scope="session")
def small_pipeline(tmp_path_factory):
    """One run of the whole workflow, both bundled datasets, with the small config of test_workflow,
    shared by the end-to-end tests (test_workflow, test_reruns). It runs from a copy of the
    repository (workflow/, alphastomics/, profiles/, envs/) with PYTHONPATH on the copy, so tests
    that edit code edit the copy, never the package. -> (copy, workdir, configfile)."""
    import shutil
    import subprocess

    from test_workflow import small_config, snakemake_in

    copy = tmp_path_factory.mktemp("repo")
    for sub in ("workflow", "alphastomics", "profiles", "envs"):
        shutil.copytree(REPO / sub, copy / sub, ignore=shutil.ignore_patterns("__pycache__"))
    workdir = tmp_path_factory.mktemp("pipeline")
    configfile = small_config(workdir)
    cmd, env = snakemake_in(copy, workdir, configfile)
    result = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-5000:]
    return copy, workdir, configfile


def pytest_itemcollected(item):
    """Under pytest-xdist (scripts/run_tests.sh: -n 2 --dist loadgroup --no-loadscope-reorder) each
    test module runs on one worker, so its module fixtures run once; modules that share an
    expensive session fixture name one group (xdist_group marker). Added as each test is
    collected: xdist reads the groups in its own collection_modifyitems hook."""
    if item.get_closest_marker("xdist_group") is None:
        item.add_marker(pytest.mark.xdist_group(item.module.__name__))


# The longest groups go first, one to each worker, so they overlap the rest instead of trailing.
LONGEST_FIRST = ("test_slurm", "test_workflow", "test_reruns")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: LONGEST_FIRST.index(item.module.__name__) if item.module.__name__ in LONGEST_FIRST
               else len(LONGEST_FIRST))
