"""A trained model on a user's own data (issue 11): any h5ad, coordinates alone, genes missing,
virtual slices, imputation, embeddings, the one-checkpoint benchmark, and the errors a user meets."""

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
BZ14 = REPO / "resources/starmap_mpfc/starmap_mpfc_20180424_BZ14_control.h5ad"


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "alphastomics.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dissociated(tmp_path_factory):
    """The held-out STARmap slice as a user might hold it: no coordinates, cells shuffled, gene names
    upper-cased and a tenth of the genes missing."""
    a = ad.read_h5ad(BZ14)
    rng = np.random.default_rng(0)
    keep = np.sort(rng.choice(a.n_vars, int(a.n_vars * 0.9), replace=False))
    b = a[rng.permutation(a.n_obs)][:, keep].copy()
    del b.obsm["spatial"]
    b.var_names = [g.upper() for g in b.var_names]
    path = tmp_path_factory.mktemp("own") / "dissociated cells.h5ad"
    b.write_h5ad(path)
    return path, a.var_names[np.setdiff1d(np.arange(a.n_vars), keep)].tolist()


def test_expr_to_pos_on_dissociated_cells(small_models, dissociated, tmp_path):
    checkpoint = small_models["starmap"][0]
    path, missing = dissociated
    out = tmp_path / "placed.h5ad"
    result = _cli("sample", "--checkpoint", checkpoint, "--data", path, "--mode", "expr_to_pos", "--out", out, "--num-samples", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    placed = ad.read_h5ad(out)
    assert "spatial" not in placed.obsm and placed.obsm["spatial_pred"].shape == (1088, 2)  # no coordinates invented as truth
    assert np.isfinite(placed.obsm["spatial_pred"]).all() and "position_uncertainty" in placed.obs
    consensus = placed.obsm["spatial_pred_consensus"]  # one map of the tissue for the user to look at
    assert consensus.shape == (1088, 2) and np.isfinite(consensus).all() and not np.allclose(consensus, placed.obsm["spatial_pred"])
    report = placed.uns["alphastomics"]["input"]
    assert int(report["genes_matched"]) == 166 - len(missing) and set(report["genes_missing_from_file"]) == set(missing)
    assert len(report["genes_matched_ignoring_case"]) == 166 - len(missing)  # every match was by case
    assert placed.var.loc[missing, "measured"].eq(False).all()  # missing genes are unmeasured, not zeros
    assert "missing" in result.stderr  # reported in the log too


def test_pos_to_expr_fills_a_coordinate_table_and_joint_makes_a_virtual_slice(small_models, tmp_path):
    checkpoint = small_models["starmap"][0]
    table = tmp_path / "spots.csv"
    pd.DataFrame(ad.read_h5ad(BZ14).obsm["spatial"][:300], columns=["x", "y"]).to_csv(table, index=False)
    out = tmp_path / "filled.h5ad"
    result = _cli("sample", "--checkpoint", checkpoint, "--coordinates", table, "--mode", "pos_to_expr", "--out", out, "--num-samples", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    filled = ad.read_h5ad(out)
    assert filled.shape == (300, 166) and (filled.layers["expr_pred"] >= 0).all()
    assert filled.layers["expr_pred"].any(axis=0).sum() > 100  # every gene the model knows can be generated
    virtual = tmp_path / "virtual.h5ad"
    assert _cli("sample", "--checkpoint", checkpoint, "--mode", "joint", "--num-cells", 250, "--out", virtual,
                "--num-samples", "1").returncode == 0
    v = ad.read_h5ad(virtual)
    assert v.shape == (250, 166) and v.obsm["spatial_pred"].shape == (250, 2) and "spatial" not in v.obsm
    # cells spaced as the training sections' are: none piled onto another
    from scipy.spatial import cKDTree

    spacing = float(v.uns["alphastomics"]["cell_spacing"])
    nearest = cKDTree(v.obsm["spatial_pred"]).query(v.obsm["spatial_pred"], k=2)[0][:, 1]
    assert spacing > 0 and np.quantile(nearest, 0.05) > 0.5 * spacing


def test_impute_keeps_given_genes_bitwise_and_hides_a_seeded_fraction(small_models, tmp_path):
    checkpoint = small_models["starmap"][0]
    out = tmp_path / "imputed.h5ad"
    result = _cli("sample", "--checkpoint", checkpoint, "--data", BZ14, "--mode", "impute", "--holdout-genes", "0.2",
                  "--out", out, "--num-samples", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    imputed = ad.read_h5ad(out)
    heldout = imputed.var["heldout"].to_numpy()
    assert heldout.sum() == round(0.2 * 166)
    assert np.array_equal(imputed.layers["expr_pred"][:, ~heldout], imputed.X[:, ~heldout])  # given genes untouched
    assert not np.array_equal(imputed.layers["expr_pred"][:, heldout], imputed.X[:, heldout])  # truth kept beside
    table = tmp_path / "imputed.tsv"
    assert _cli("evaluate", out, "--out", table).returncode == 0


def test_extract_embeds_cells_without_coordinates(small_models, dissociated, tmp_path):
    import scanpy as sc

    checkpoint = small_models["starmap"][0]
    out = tmp_path / "embedded.h5ad"
    result = _cli("extract", "--checkpoint", checkpoint, "--data", dissociated[0], "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    embedded = ad.read_h5ad(out)
    assert embedded.obsm["X_alphastomics"].shape == (1088, 32) and np.isfinite(embedded.obsm["X_alphastomics"]).all()
    sc.pp.neighbors(embedded, use_rep="X_alphastomics", n_neighbors=10)  # ready for scanpy


def test_test_command_runs_the_whole_benchmark_of_a_checkpoint(small_models, tmp_path):
    checkpoint, data, held_out = small_models["bdtnp"]
    out = tmp_path / "bench"
    result = _cli("test", "--checkpoint", checkpoint, "--data", data, "--out", out, "--modes", "expr_to_pos", "joint")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert set(metrics["slice"]) == {held_out} and set(metrics["mode"]) == {"expr_to_pos", "joint"}
    assert (out / "report.html").stat().st_size > 10_000


@pytest.mark.parametrize("case", ["no_modality", "mode_needs_coordinates", "unknown_impute_gene", "bad_csv", "missing_csv_value"])
def test_own_data_errors_name_the_file_and_write_nothing(small_models, dissociated, tmp_path, case):
    checkpoint = small_models["starmap"][0]
    out = tmp_path / "out.h5ad"
    if case == "no_modality":
        bad = tmp_path / "nothing.h5ad"
        ad.AnnData(X=np.ones((5, 2), np.float32), var=pd.DataFrame(index=["NotAGene", "Other"])).write_h5ad(bad)
        args, expected = ["--data", bad, "--mode", "expr_to_pos"], "neither coordinates"
    elif case == "mode_needs_coordinates":
        bad = dissociated[0]
        args, expected = ["--data", bad, "--mode", "pos_to_expr"], "needs coordinates"
    elif case == "unknown_impute_gene":
        bad = BZ14
        args, expected = ["--data", bad, "--mode", "impute", "--impute-genes", "Pcp4,NoSuchGene"], "NoSuchGene"
    else:
        bad = tmp_path / "spots.csv"
        bad.write_text("x,y\n1,2\n3,oops\n" if case == "bad_csv" else "x,y\n1,2\n3,\n")
        args, expected = ["--coordinates", bad, "--mode", "pos_to_expr"], "non-numeric"
    result = _cli("sample", "--checkpoint", checkpoint, *args, "--out", out)
    assert result.returncode != 0
    assert str(bad) in result.stderr and expected in result.stderr, result.stderr[-2000:]
    assert not out.exists() and not list(tmp_path.glob(".out.h5ad*"))


def test_posterior_mean_averages_every_starting_noise_whatever_the_chunk(small_models):
    """expr_pred_mean: the first-step x0 estimates of posterior_mean_draws starting noises (seeds
    seed + i), averaged; evaluated a few at a time, the result is the same."""
    from alphastomics.checkpoint import load_model
    from alphastomics.io.manifest import load_manifest
    from alphastomics.io.shards import load_slice
    from alphastomics.draws import _first_step_expectation, draw_samples, expected_expression, known_batch

    checkpoint, data_dir, slice_id = small_models["bdtnp"]
    model = load_model(checkpoint, "cpu")
    data = load_slice(data_dir, slice_id, load_manifest(data_dir))
    batch = known_batch(model, data, "pos_to_expr")
    one_by_one = np.stack([_first_step_expectation(model, batch, [seed])[0] for seed in range(3, 8)])
    assert not np.allclose(one_by_one[0], one_by_one[1])  # each seed its own estimate
    np.testing.assert_allclose(expected_expression(model, batch, list(range(3, 8)), chunk=2), one_by_one.mean(0), rtol=1e-4, atol=1e-6)
    draws = draw_samples(model, batch, "pos_to_expr", 2, 3, 3, progress=False, posterior_mean_draws=5)
    assert draws.posterior_mean_draws == 5 and draws.seeds == [3, 4]
    # pos_to_expr's posterior mean carries the per-gene calibration of export --data
    np.testing.assert_allclose(draws.expected_expression, one_by_one.mean(0) * model.expression_calibration, rtol=1e-4, atol=1e-6)
    fewer = draw_samples(model, batch, "pos_to_expr", 2, 3, 3, progress=False, posterior_mean_draws=1)
    assert fewer.posterior_mean_draws == 2  # never fewer than the draws themselves


def test_expr_to_pos_keeps_a_consensus_layout_scored_as_a_draw_is(small_models, tmp_path):
    """obsm['spatial_pred_consensus']: in a shared frame, the first-step x0 estimates of the starting
    noises averaged (whatever the chunk), in source units, given the draws' spread; in a per-slice
    frame, the Procrustes mean of the draws given their spread; in the sample file then smoothed over
    the cells' neighbours in their given expression and spaced as the draws' cells are. evaluate scores it under consensus_* exactly as it
    scores the first draw."""
    from alphastomics.checkpoint import load_model
    from alphastomics.config import EvaluationConfig
    from alphastomics.evaluate import evaluate_sample
    from alphastomics.expression_graph import ExpressionGraph, neighbour_graph, smooth
    from alphastomics.io.manifest import load_manifest
    from alphastomics.io.shards import load_slice
    from alphastomics.layout import consensus_layout, matched_spread, spaced_apart, typical_spacing
    from alphastomics.metrics import neighbourhoods
    from alphastomics.draws import default_expression_graph, draw_samples, expected_positions, known_batch, refined_estimates
    from alphastomics.sample import sample_slice

    checkpoint, data_dir, slice_id = small_models["bdtnp"]
    model = load_model(checkpoint, "cpu")
    data = load_slice(data_dir, slice_id, load_manifest(data_dir))
    batch = known_batch(model, data, "expr_to_pos")
    one_by_one = np.stack([expected_positions(model, batch, [seed]) for seed in range(3, 8)])
    assert not np.allclose(one_by_one[0], one_by_one[1])
    np.testing.assert_allclose(expected_positions(model, batch, list(range(3, 8)), chunk=2), one_by_one.mean(0), rtol=1e-4, atol=1e-5)
    draws = draw_samples(model, batch, "expr_to_pos", 2, 3, 3, progress=False, posterior_mean_draws=5)
    n = len(data.cell_ids)
    posterior_mean = model.frame.to_source(one_by_one.mean(0)[:n], 3)
    np.testing.assert_allclose(draws.consensus_positions, consensus_layout(draws.coordinates, posterior_mean), rtol=1e-3, atol=1e-2)
    # sample files smooth it over the cells' neighbours in their given (measured) genes, keeping its spread
    settings = default_expression_graph(model, "expr_to_pos")
    assert settings.steps > 0
    graph = neighbour_graph(data.expression[:, data.gene_mask.astype(bool)], settings.neighbours, settings.components,
                            within=draws.consensus_positions, pool=settings.pool)
    spacing = typical_spacing(draws.coordinates)
    by_hand = spaced_apart(matched_spread(smooth(draws.consensus_positions, graph, settings.steps), draws.consensus_positions[None]),
                           spacing)
    smoothed = refined_estimates(draws, data.expression, batch, "expr_to_pos", settings)
    np.testing.assert_allclose(smoothed.consensus_positions, by_hand, rtol=1e-6)
    only_spaced = refined_estimates(draws, data.expression, batch, "expr_to_pos", ExpressionGraph(steps=0))
    np.testing.assert_allclose(only_spaced.consensus_positions, spaced_apart(draws.consensus_positions, spacing), rtol=1e-6)
    unsmoothed = sample_slice(checkpoint, data_dir, slice_id, "expr_to_pos", steps=3, num_samples=2, progress=False,
                              posterior_mean_draws=4, expression_graph={"steps": 0})
    assert unsmoothed.uns["alphastomics"]["expression_graph"]["steps"] == 0

    adata = sample_slice(checkpoint, data_dir, slice_id, "expr_to_pos", steps=3, num_samples=2, progress=False, posterior_mean_draws=4)
    assert adata.uns["alphastomics"]["expression_graph"]["steps"] == settings.steps
    consensus = adata.obsm["spatial_pred_consensus"]
    assert consensus.shape == adata.obsm["spatial"].shape and not np.allclose(consensus, adata.obsm["spatial_pred"])
    assert not np.allclose(consensus, unsmoothed.obsm["spatial_pred_consensus"])
    np.testing.assert_allclose(np.cov(consensus, rowvar=False).diagonal(), np.cov(unsmoothed.obsm["spatial_pred_consensus"], rowvar=False).diagonal(),
                               rtol=0.15)  # the same seeds: smoothing moves cells, not the layout's spread
    adata.uns["alphastomics"]["train_slices"] = []
    table, _ = evaluate_sample(adata, EvaluationConfig())
    values = dict(zip(table["metric"], table["value"]))
    by_hand = neighbourhoods.knn_preservation(adata.obsm["spatial"].astype(np.float64), consensus.astype(np.float64), [10])[0]
    assert values["consensus_knn_preservation_k10"] == pytest.approx(by_hand["knn_preservation_k10"])
    error = np.median(np.linalg.norm(consensus - adata.obsm["spatial"], axis=1))
    assert values["consensus_position_error_median"] == pytest.approx(error, rel=1e-5)
    assert {"distance_spearman_median", "consensus_distance_spearman_median", "consensus_extent_ratio_worst"} <= set(values)

    starmap_checkpoint, starmap_dir, starmap_slice = small_models["starmap"]
    starmap = load_model(starmap_checkpoint)
    starmap_data = load_slice(starmap_dir, starmap_slice, load_manifest(starmap_dir))
    per_slice = draw_samples(starmap, known_batch(starmap, starmap_data, "expr_to_pos"), "expr_to_pos", 3, 0, 2, progress=False)
    np.testing.assert_allclose(per_slice.consensus_positions, consensus_layout(per_slice.coordinates[:, :, :2]), rtol=1e-4, atol=1e-2)
    written = sample_slice(starmap_checkpoint, starmap_dir, starmap_slice, "expr_to_pos", steps=2, num_samples=3, progress=False)
    table, _ = evaluate_sample(written, EvaluationConfig())
    assert "consensus_distance_spearman_median" in set(table["metric"])
    assert "consensus_position_error_median" not in set(table["metric"])  # a per-slice frame has no absolute place


def test_a_shared_frame_slice_can_be_laid_out_among_training_cells(small_models):
    """--atlas-context-cells: BDTNP slab2 placed among 500 cells drawn from the training slabs; the
    file keeps only slab2's cells, records the context, and differs from the slice laid out alone
    with the same seed; the context is a reproducible draw of training cells, never of slab2."""
    from alphastomics.checkpoint import load_model
    from alphastomics.io.manifest import load_manifest
    from alphastomics.io.shards import load_slice
    from alphastomics.sample import atlas_context, sample_slice

    checkpoint, data_dir, held_out = small_models["bdtnp"]
    model, manifest = load_model(checkpoint), load_manifest(data_dir)
    data = load_slice(data_dir, held_out, manifest)
    context = atlas_context(model, data_dir, manifest, data, "expr_to_pos", 500, seed=3)
    training = {s: load_slice(data_dir, s, manifest) for s in model.train_slices}
    by_id = {cell: (s, i) for s, t in training.items() for i, cell in enumerate(t.cell_ids)}
    assert len(context.cell_ids) == 500 and len(set(context.cell_ids)) == 500
    assert not set(context.cell_ids) & set(data.cell_ids)
    for cell, row in zip(context.cell_ids[::50], context.expression[::50]):
        s, i = by_id[cell]
        np.testing.assert_array_equal(row, training[s].expression[i])
    assert list(atlas_context(model, data_dir, manifest, data, "expr_to_pos", 500, seed=3).cell_ids) == list(context.cell_ids)
    assert atlas_context(model, data_dir, manifest, data, "pos_to_expr", 500, seed=3) is None
    assert atlas_context(model, data_dir, manifest, data, "expr_to_pos", 0, seed=3) is None
    assert atlas_context(load_model(small_models["starmap"][0]), small_models["starmap"][1],
                         load_manifest(small_models["starmap"][1]), data, "expr_to_pos", 500, seed=3) is None  # per-slice frame

    alone = sample_slice(checkpoint, data_dir, held_out, "expr_to_pos", steps=3, num_samples=2, progress=False)
    among = sample_slice(checkpoint, data_dir, held_out, "expr_to_pos", steps=3, num_samples=2, progress=False, atlas_context_cells=500)
    assert "atlas_context" not in alone.uns["alphastomics"]
    recorded = among.uns["alphastomics"]["atlas_context"]
    assert recorded["cells"] == 500 and sorted(recorded["slices"]) == sorted(model.train_slices)
    assert among.n_obs == data.cell_ids.size and list(among.obs_names) == list(alone.obs_names)
    for key in ("spatial_pred", "spatial_pred_consensus"):
        assert among.obsm[key].shape == alone.obsm[key].shape and not np.allclose(among.obsm[key], alone.obsm[key])
    assert among.obs["position_uncertainty"].notna().all()
