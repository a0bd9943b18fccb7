"""Peer methods (alphastomics.peers) on the bundled real data: each beats its lower bound (a
method returning random output would not), writes the sampler's sample format that evaluate
scores like AlphaSTomics' own, and a failure (too slow, not installed) becomes a status record.

Fast by construction: held-out slices are cut to a few hundred cells, epochs are few."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pandas as pd
import pytest

from alphastomics.cli import main as cli
from alphastomics.config import EvaluationConfig
from alphastomics.evaluate import evaluate_sample
from alphastomics.metrics import clusters, expression, neighbourhoods
from alphastomics.peers import baselines
from alphastomics.peers.common import load_inputs
from alphastomics.peers.methods import run_method

STARMAP_TEST = "20180424_BZ14_control"
BDTNP_TEST = "slab2"


def cut(inputs, n_cells: int, seed: int = 0):
    """The same inputs with the held-out slice cut to a random ``n_cells`` cells (tests stay fast)."""
    test = inputs.test
    keep = np.sort(np.random.default_rng(seed).choice(len(test.cell_ids), size=min(n_cells, len(test.cell_ids)), replace=False))
    small = dataclasses.replace(test, cell_ids=test.cell_ids[keep], coords=test.coords[keep], expression=test.expression[keep],
                                cell_types=None if test.cell_types is None else np.asarray(test.cell_types)[keep])
    return dataclasses.replace(inputs, test=small)


def knn10(inputs, predicted) -> float:
    d = inputs.n_dims
    values, _ = neighbourhoods.knn_preservation(inputs.test.coords[:, :d], np.asarray(predicted), [10])
    return values["knn_preservation_k10"]


def distance_spearman(inputs, predicted) -> float:
    from alphastomics.metrics import geometry

    values, _, _ = geometry.distance_metrics(inputs.test.coords[:, : inputs.n_dims], np.asarray(predicted, float), [0.1])
    return values["distance_spearman_median"]


def gene_spearman(inputs, predicted) -> float:
    """Median per-gene Spearman over the held-out genes (impute) or all measured genes."""
    genes = inputs.heldout & inputs.shared if inputs.heldout is not None else inputs.test.gene_mask.astype(bool)
    values, _ = expression.expression_metrics(inputs.test.expression[:, genes], np.asarray(predicted)[:, genes])
    return values["expr_spearman_gene_median"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def starmap(starmap_dir):
    return cut(load_inputs(starmap_dir, STARMAP_TEST, frame="per_slice"), 500)


@pytest.fixture(scope="module")
def bdtnp(bdtnp_dir):
    return cut(load_inputs(bdtnp_dir, BDTNP_TEST, frame="shared"), 400)


def test_random_permutation_is_the_lower_bound_of_knn_preservation(starmap):
    coords = baselines.random_positions(starmap.test.coords[:, :2], seed=0)
    assert sorted(map(tuple, coords)) == sorted(map(tuple, starmap.test.coords[:, :2]))  # same points, shuffled
    assert knn10(starmap, coords) < 0.05  # about k / N


@pytest.mark.parametrize("dataset", ["starmap", "bdtnp"])
def test_celery_regressor_beats_random_positions(dataset, request):
    from alphastomics.peers.celery import celery_positions

    inputs = request.getfixturevalue(dataset)
    predicted, run = celery_positions(inputs, num_epochs_max=40, batch_size=32)
    assert run["package"] == "CeLEryPy" and run["settings"]["num_epochs_max"] == 40
    random = baselines.random_positions(inputs.test.coords[:, : inputs.n_dims])
    assert predicted.shape == (len(inputs.test.cell_ids), inputs.n_dims) and np.isfinite(predicted).all()
    # STARmap: expression places a cell in its cortical layer, not along it; random kNN@10 is
    # 10/499 +- 0.002 over 500 cells, so a margin of 0.008 is 4 standard deviations.
    margin = {"starmap": 0.008, "bdtnp": 0.05}[dataset]
    assert knn10(inputs, predicted) > knn10(inputs, random) + margin
    assert distance_spearman(inputs, predicted) > distance_spearman(inputs, random) + 0.15


def test_oracle_recovers_positions_its_expression_encodes_and_never_fits_a_cell_on_itself():
    """Synthetic slice whose expression is a smooth function of position: cross-validated regression
    recovers the layout; with expression shuffled across cells it cannot. With k = 1 a fit that saw
    the cell itself would return its exact coordinates: none does."""
    from alphastomics.io.shards import SliceData
    from alphastomics.peers.common import PeerInputs

    rng = np.random.default_rng(0)
    coords = np.c_[rng.uniform(0, 100, (300, 2)), np.zeros(300)].astype(np.float32)
    centres = np.stack(np.meshgrid(np.linspace(0, 100, 4), np.linspace(0, 100, 3)), -1).reshape(12, 2)
    bumps = np.exp(-((coords[:, None, :2] - centres) ** 2).sum(-1) / (2 * 30.0**2))  # 12 genes, each high near its centre
    expression = (bumps + 0.02 * rng.normal(size=bumps.shape)).astype(np.float32)
    test = SliceData("s", "synthetic", np.arange(300).astype(str), coords, 2, expression, np.ones(12, bool), None,
                     [f"g{i}" for i in range(12)])
    inputs = PeerInputs("synthetic", test, [], "per_slice", np.ones(12, bool))
    predicted = baselines.oracle_positions(inputs, k=5)
    assert predicted.shape == (300, 2)
    assert distance_spearman(inputs, predicted) > 0.9
    nearest = baselines.oracle_positions(inputs, k=1)
    assert not np.isclose(nearest, coords[:, :2]).all(1).any()
    shuffled = dataclasses.replace(inputs, test=dataclasses.replace(test, expression=expression[rng.permutation(300)]))
    assert distance_spearman(shuffled, baselines.oracle_positions(shuffled, k=5)) < 0.2


def test_celery_alignment_rotates_a_rotated_copy_back():
    from alphastomics.peers.celery import align_slices

    rng = np.random.default_rng(0)
    coords = rng.normal(size=(300, 2)) * [3.0, 1.0]
    expression = np.column_stack([coords[:, 0], coords[:, 1], rng.normal(size=300) * 0.01])  # expression encodes position
    angle = 1.1
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    aligned = align_slices([expression, expression], [coords, coords @ rotation.T + 5])
    assert np.abs(aligned[0] - aligned[1]).mean() < 0.1


def test_novosparc_de_novo_beats_random_positions(bdtnp):
    pytest.importorskip("novosparc", reason="the peers extra (pip install -e '.[peers]') is not installed")
    from alphastomics.peers.novosparc_peer import novosparc_positions, training_target_space

    small = cut(bdtnp, 250)
    grid = training_target_space(small, 250)
    assert 150 < len(grid) < 400 and grid.shape[1] == 3
    # the grid has the training slabs' shape (their mean extent along each axis of the shared
    # frame), never the held-out slab's; its size follows the cell count at their density
    train_extents = np.mean([np.ptp(s.coords[:, :3], axis=0) for s in small.train], axis=0)
    ratios = np.ptp(grid, axis=0) / train_extents
    assert ratios.max() / ratios.min() < 1.3
    predicted, run = novosparc_positions(small, max_iter=30)
    assert run["outer_iterations"] <= 30 and run["settings"]["target"] == "training"
    random = baselines.random_positions(small.test.coords[:, :3])
    assert knn10(small, predicted) > knn10(small, random) + 0.03


def test_knn_at_positions_beats_the_training_mean_in_a_shared_frame(bdtnp):
    predicted = baselines.knn_expression_at_positions(bdtnp)
    mean = np.broadcast_to(bdtnp.train_expression(np.ones(len(bdtnp.test.genes), bool)).mean(0), predicted.shape)
    genes = bdtnp.test.gene_mask.astype(bool)
    mse = lambda p: float(np.mean((bdtnp.test.expression[:, genes] - p[:, genes]) ** 2))  # noqa: E731
    assert mse(predicted) < 0.8 * mse(mean)
    assert gene_spearman(bdtnp, predicted) > 0.2  # the mean is constant: its per-gene Spearman counts as 0


def test_knn_at_positions_does_not_apply_to_per_slice_frames(starmap):
    from alphastomics.peers.common import NotApplicable

    with pytest.raises(NotApplicable, match="shared coordinate frame"):
        baselines.knn_expression_at_positions(starmap)


@pytest.fixture(scope="module")
def starmap_impute(starmap_dir):
    return cut(load_inputs(starmap_dir, STARMAP_TEST, frame="per_slice", mode="impute", holdout_fraction=0.1), 500)


def test_held_out_genes_are_the_ones_the_sampler_hides(starmap_impute):
    from alphastomics.heldout import heldout_genes

    test = starmap_impute.test
    measured = [g for g, m in zip(test.genes, test.gene_mask) if m]
    assert set(np.asarray(test.genes)[starmap_impute.heldout]) == set(heldout_genes(measured, 0.1, 0))


def test_knn_imputation_beats_the_training_mean(starmap_impute):
    predicted = baselines.knn_impute(starmap_impute)
    assert gene_spearman(starmap_impute, predicted) > 0.1  # the training mean scores 0


def test_tangram_imputation_beats_the_training_mean(starmap_impute):
    pytest.importorskip("tangram", reason="the peers extra (pip install -e '.[peers]') is not installed")
    from alphastomics.peers.tangram_peer import tangram_impute

    predicted, run = tangram_impute(starmap_impute, num_epochs=60)
    assert run["settings"]["num_epochs"] == 60
    heldout = starmap_impute.heldout
    assert np.isfinite(predicted).all() and np.abs(predicted[:, heldout]).sum() > 0
    assert gene_spearman(starmap_impute, predicted) > 0.1


def _ari(inputs, embedding) -> float:
    types = np.asarray(inputs.test.cell_types).astype(str)
    _, codes = np.unique(types, return_inverse=True)
    labels, _ = clusters.leiden_clusters(embedding, 1.0, 0, use_pca=embedding.shape[1] > clusters.MAX_PCS)
    return clusters.cluster_agreement(codes, labels, "x")["x_ari"]


def test_graphst_style_embedding_beats_a_random_embedding(starmap):
    from alphastomics.peers.graphst import graphst_embedding, spatial_graph

    graph = spatial_graph(starmap.test.coords[:, :2], k=3)
    assert (graph != graph.T).nnz == 0 and graph.diagonal().sum() == 0 and (graph.sum(1) >= 3).all()
    genes = starmap.test.gene_mask.astype(bool)
    embedding = graphst_embedding(starmap.test.expression[:, genes], starmap.test.coords[:, :2], epochs=60)
    random = np.random.default_rng(0).normal(size=embedding.shape).astype(np.float32)
    assert _ari(starmap, embedding) > _ari(starmap, random) + 0.05
    assert _ari(starmap, baselines.pca_embedding(starmap.test.expression[:, genes])) > _ari(starmap, random) + 0.05


def test_peer_samples_are_scored_like_the_models(starmap_impute, bdtnp):
    """Same format as the sampler's: evaluate scores impute on the held-out genes only, with the training-mean row."""
    adata = run_method("knn", "impute", starmap_impute)
    table, details = evaluate_sample(adata, EvaluationConfig(), source="knn.impute")
    assert set(table["method"]) == {"knn"}
    assert details["expr_mse"]["sample"]["n_measured_genes"] == int(starmap_impute.heldout.sum())
    adata = run_method("random", "expr_to_pos", bdtnp)
    table, _ = evaluate_sample(adata, EvaluationConfig(), source="random.expr_to_pos")
    values = table.set_index("metric")["value"]
    assert values["knn_preservation_k10"] < 0.1 and "distance_spearman_median" in values


def test_peer_command_records_a_method_too_slow_for_its_limit(starmap_dir, tmp_path):
    status, out = tmp_path / "s.status.json", tmp_path / "s.h5ad"
    code = cli(["peer", "--method", "celery", "--mode", "expr_to_pos", "--data", str(starmap_dir), "--slice", STARMAP_TEST,
                "--out", str(out), "--status", str(status), "--time-limit", "0.5"])
    assert code == 0  # the pipeline goes on
    record = json.loads(status.read_text())
    assert record["status"] == "failed" and "time limit" in record["reason"] and not out.exists()
    table = tmp_path / "s.tsv"
    assert cli(["evaluate", str(out), "--if-status", str(status), "--out", str(table)]) == 0
    assert pd.read_csv(table, sep="\t").empty


def test_peer_command_records_a_package_that_is_not_installed(starmap_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "novosparc", None)  # import novosparc -> ImportError, in the forked child too
    status = tmp_path / "n.status.json"
    assert cli(["peer", "--method", "novosparc", "--mode", "expr_to_pos", "--data", str(starmap_dir), "--slice", STARMAP_TEST,
                "--out", str(tmp_path / "n.h5ad"), "--status", str(status)]) == 0
    record = json.loads(status.read_text())
    assert record["status"] == "failed" and record["reason"].startswith("not installed: novosparc")


def test_peer_command_names_a_bad_dataset_directory(tmp_path):
    status = tmp_path / "x.status.json"
    assert cli(["peer", "--method", "random", "--mode", "expr_to_pos", "--data", str(tmp_path / "nowhere"), "--slice", "a",
                "--out", str(tmp_path / "x.h5ad"), "--status", str(status), "--strict"]) == 1
    record = json.loads(status.read_text())
    assert record["status"] == "failed" and "nowhere" in record["reason"] and "manifest" in record["reason"]


def test_peer_command_writes_a_sample_file_and_refuses_a_wrong_mode(starmap_dir, tmp_path):
    status, out = tmp_path / "r.status.json", tmp_path / "r.h5ad"
    assert cli(["peer", "--method", "random", "--mode", "expr_to_pos", "--data", str(starmap_dir), "--slice", STARMAP_TEST,
                "--out", str(out), "--status", str(status)]) == 0
    record = json.loads(status.read_text())
    assert record["status"] == "ok" and record["sample"] == str(out) and record["wall_s"] > 0
    import anndata as ad

    adata = ad.read_h5ad(out)
    assert adata.uns["alphastomics"]["method"] == "random" and adata.obsm["spatial_pred"].shape == adata.obsm["spatial"].shape
    assert cli(["peer", "--method", "tangram", "--mode", "expr_to_pos", "--data", str(starmap_dir), "--slice", STARMAP_TEST,
                "--out", str(out), "--status", str(status)]) == 1


def test_runs_table_joins_status_records_and_benchmark_files(tmp_path):
    """methods.tsv: every run with its status, and wall time / peak memory from Snakemake's benchmark files."""
    status = tmp_path / "peers/novosparc/s1.expr_to_pos.status.json"
    status.parent.mkdir(parents=True)
    status.write_text(json.dumps({"dataset": "d", "slice": "s1", "mode": "expr_to_pos", "method": "novosparc",
                                  "status": "failed", "reason": "too slow: stopped at the time limit of 300 s",
                                  "wall_s": 301.0, "max_rss_mb": 900.0}))
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    benchmarks = []
    for method, name, seconds, rss in [("novosparc", "s1.expr_to_pos", 305.5, 950.0), ("alphastomics", "s1.expr_to_pos", 40.0, 500.0),
                                       ("alphastomics", "train", 400.0, 800.0)]:
        path = tmp_path / "benchmarks" / method / f"{name}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t50\t10\n")
        benchmarks.append(str(path))
    out = tmp_path / "methods.tsv"
    missing = str(tmp_path / "benchmarks/celery/s1.expr_to_pos.tsv")  # a run that never wrote one: left blank, not an error
    assert cli(["runs", "--dataset", "d", "--status", str(status), "--benchmarks", *benchmarks, missing, "--out", str(out)]) == 0
    from alphastomics.runs import read_runs

    table = read_runs([out]).set_index(["method", "mode"])
    assert table.loc[("alphastomics", "train"), "wall_s"] == 400.0
    mine = table.loc[("alphastomics", "expr_to_pos")]
    assert mine["status"] == "ok" and mine["max_rss_mb"] == 500.0 and mine["slice"] == "s1"
    failed = table.loc[("novosparc", "expr_to_pos")]
    assert failed["status"] == "failed" and "time limit" in failed["reason"] and failed["wall_s"] == 305.5
    assert len(table) == 3


def test_mimyr_status_names_the_input_the_sections_lack(bdtnp_dir, tmp_path):
    """MIMYR takes Allen-CCF mouse-brain sections only: on the BDTNP slabs its status says which of its
    documented inputs they lack (and the run writes no sample file)."""
    import importlib.util

    from alphastomics.peers.run import run_peer

    status = tmp_path / "slab2.joint.status.json"
    record = run_peer("mimyr", "joint", str(bdtnp_dir), "slab2", tmp_path / "slab2.joint.h5ad", status, frame="shared",
                      exclude_slices=["slab2"])
    assert record["status"] == "not applicable" and json.loads(status.read_text())["status"] == "not applicable"
    assert "Allen CCF in millimetres" in record["reason"] and "no cell types" in record["reason"]
    if importlib.util.find_spec("mimyr") is None:
        assert "scipy < 1.17" in record["reason"]
    assert not (tmp_path / "slab2.joint.h5ad").exists()
