"""``alphastomics evaluate`` and ``gather`` on sample files in the docs/FORMATS.md layout, built from a
real STARmap slice: true values, and as predictions the true ones rotated, perturbed or shuffled."""

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from alphastomics.cli import main as cli
from alphastomics.config import EvaluationConfig
from alphastomics.errors import InputError
from alphastomics import GENERATED_BY_MODE
from alphastomics.evaluate import evaluate_sample
from alphastomics.io.metric_tables import TABLE_COLUMNS
from alphastomics.io.sample_file import EMBEDDING, sample_from_anndata

SOURCE = Path(__file__).resolve().parents[1] / "resources/starmap_mpfc/starmap_mpfc_20180417_BZ5_control.h5ad"

EXPRESSION_METRICS = {f"expr_{c}_{a}_{s}" for c in ("pearson", "spearman") for a in ("gene", "cell") for s in ("median", "mean")} | {"expr_mse", "expr_mae"}
POSITION_METRICS = {
    "procrustes_disparity", "rssd_kabsch", "distance_matrix_mse_unit_rms", "distance_spearman_median", "distance_spearman_mean",
    "contact_precision_q01", "contact_f1_q01", "contact_precision_q10", "contact_f1_q10",
    "knn_preservation_k5", "knn_preservation_k10", "knn_preservation_k20",
}
MORAN_METRICS = {"morans_i_corr", "morans_i_abs_diff"}
SHAPE_METRICS = {"extent_ratio_axis1", "extent_ratio_axis2", "extent_ratio_worst", "extent_ratio_anisotropy",
                 "distance_wasserstein_unit_rms", "nn_distance_ratio_median", "nn_distance_wasserstein_rel",
                 "density_spread_ratio", "axis_profile_wasserstein_worst"}
DISTRIBUTION_METRICS = {"expr_zero_fraction_abs_diff", "expr_std_ratio_median", "expr_negative_fraction"}
TYPED_POSITION_METRICS = {"nhood_enrichment_corr", "label_transfer_accuracy_spatial"}
TYPED_EXPRESSION_METRICS = {"leiden_ari", "leiden_nmi", "leiden_accuracy", "label_transfer_accuracy_expression"}


@pytest.fixture(scope="module")
def starmap_slice():
    """A real STARmap slice: library-size normalised log1p expression, coordinates, cell types."""
    raw = ad.read_h5ad(SOURCE)
    counts = np.asarray(raw.X, dtype=np.float64)
    expression = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4).astype(np.float32)
    return expression, np.asarray(raw.obsm["spatial"], dtype=np.float64), raw.obs["cell_type"].astype(str).to_numpy(), raw.var_names


def make_sample(starmap_slice, mode, generated_expression=None, generated_positions=None, cell_types=True, measured=None):
    """A sample AnnData in the docs/FORMATS.md layout; the non-generated side is the given (true) one."""
    expression, positions, types, genes = starmap_slice
    obs = pd.DataFrame({"slice_id": "20180417_BZ5_control", "platform": "starmap"}, index=[f"c{i}" for i in range(len(expression))])
    if cell_types:
        obs["cell_type"] = pd.Categorical(types)
    adata = ad.AnnData(X=expression.copy(), obs=obs, var=pd.DataFrame(index=genes))
    generates = GENERATED_BY_MODE[mode]
    adata.layers["expr_pred"] = (generated_expression if "expression" in generates else expression).astype(np.float32)
    adata.obsm["spatial"] = positions.astype(np.float32)
    adata.obsm["spatial_pred"] = (generated_positions if "position" in generates else positions).astype(np.float32)
    adata.var["measured"] = np.ones(len(genes), bool) if measured is None else measured
    adata.uns["alphastomics"] = {"mode": mode, "method": "alphastomics", "dataset": "starmap_mpfc", "slice_id": "20180417_BZ5_control",
                                 "n_dims": 2, "generated": list(generates), "seed": 0}
    return adata


def rotate(points, angle=1.1, mirror=False):
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centred = points - points.mean(0)
    if mirror:
        centred[:, 0] *= -1
    return centred @ rotation.T + points.mean(0)


def values_of(table):
    return dict(zip(table["metric"], table["value"]))


def test_cli_writes_table_and_json_per_mode_with_the_right_metrics(starmap_slice, tmp_path):
    expression, positions, _, _ = starmap_slice
    rng = np.random.default_rng(0)
    noisy_expression = np.clip(expression + rng.normal(scale=0.7, size=expression.shape), 0, None)
    noisy_positions = rotate(positions) + rng.normal(scale=150, size=positions.shape)
    expected = {
        "expr_to_pos": POSITION_METRICS | SHAPE_METRICS | MORAN_METRICS | TYPED_POSITION_METRICS,
        "pos_to_expr": EXPRESSION_METRICS | DISTRIBUTION_METRICS | MORAN_METRICS | TYPED_EXPRESSION_METRICS,
        # joint: no cell-to-cell correspondence, so no per-cell metric (and no reference: no distribution rows)
        "joint": SHAPE_METRICS | DISTRIBUTION_METRICS | MORAN_METRICS,
    }
    tables = []
    for mode, metrics in expected.items():
        sample = tmp_path / "samples" / f"20180417_BZ5_control.{mode}.h5ad"
        sample.parent.mkdir(exist_ok=True)
        make_sample(starmap_slice, mode, noisy_expression, noisy_positions).write_h5ad(sample)
        out = tmp_path / "metrics" / f"20180417_BZ5_control.{mode}.tsv"
        assert cli(["evaluate", str(sample), "--out", str(out), "--dataset", "starmap_mpfc"]) == 0
        table = pd.read_csv(out, sep="\t")
        assert list(table.columns) == TABLE_COLUMNS
        assert set(table["metric"]) == metrics, mode
        assert np.isfinite(table["value"]).all(), table[~np.isfinite(table["value"])]
        assert (table["dataset"] == "starmap_mpfc").all() and (table["mode"] == mode).all()
        assert (table["slice"] == "20180417_BZ5_control").all() and (table["method"] == "alphastomics").all()
        details = json.loads(out.with_suffix(".json").read_text())
        assert set(details) == metrics
        assert all("seconds" in how and "sample" in how for how in details.values())
        assert not list(out.parent.glob(".*tmp"))  # no temporary file left behind
        tables.append(out)
        if mode == "expr_to_pos":
            assert details["knn_preservation_k10"]["k"] == 10
            assert details["contact_f1_q10"]["quantile"] == 0.1 and details["contact_f1_q10"]["cells"] == "all"
            assert details["rssd_kabsch"]["reflections_allowed"] is True
        if mode == "expr_to_pos":
            assert "true expression on the generated-coordinate graph" in details["morans_i_corr"]["graphs"]
        per_gene = details["morans_i_corr"]["per_gene"]
        assert len(per_gene["genes"]) == len(per_gene["true"]) == len(per_gene["generated"]) == expression.shape[1]

    gathered = tmp_path / "metrics.tsv"
    assert cli(["gather", *map(str, tables), "--out", str(gathered)]) == 0
    whole = pd.read_csv(gathered, sep="\t")
    assert list(whole.columns) == TABLE_COLUMNS
    assert len(whole) == sum(len(m) for m in expected.values())
    assert set(whole["mode"]) == set(expected)
    from alphastomics.metrics import metric_direction  # the report's only source of which value is better

    assert not [m for m in whole["metric"].unique() if metric_direction(m) is None]


def _both(starmap_slice, expression, positions, config):
    """expr_to_pos metrics of ``positions`` and pos_to_expr metrics of ``expression``, in one dict."""
    values = values_of(evaluate_sample(make_sample(starmap_slice, "expr_to_pos", generated_positions=positions), config)[0])
    values.update(values_of(evaluate_sample(make_sample(starmap_slice, "pos_to_expr", expression), config)[0]))
    return values


def test_rotated_mirrored_copy_scores_perfectly_and_shuffled_cells_poorly(starmap_slice):
    expression, positions, _, _ = starmap_slice
    config = EvaluationConfig()
    perfect = _both(starmap_slice, expression, rotate(positions, mirror=True), config)
    assert perfect["procrustes_disparity"] == pytest.approx(0, abs=1e-6)
    assert perfect["knn_preservation_k10"] > 0.99 and perfect["distance_spearman_median"] > 0.9999
    assert perfect["contact_f1_q01"] > 0.99 and perfect["nhood_enrichment_corr"] > 0.99
    assert perfect["extent_ratio_worst"] == pytest.approx(1.0, abs=1e-5) and perfect["distance_wasserstein_unit_rms"] < 0.01
    assert perfect["expr_mse"] == 0 and perfect["expr_pearson_gene_median"] == pytest.approx(1.0)
    assert perfect["expr_zero_fraction_abs_diff"] == 0 and perfect["expr_std_ratio_median"] == pytest.approx(1.0)

    order = np.random.default_rng(1).permutation(len(positions))
    shuffled = _both(starmap_slice, expression[order], positions[order], config)
    assert shuffled["procrustes_disparity"] > 0.9
    assert shuffled["knn_preservation_k10"] < 0.05 and abs(shuffled["distance_spearman_median"]) < 0.1
    assert shuffled["label_transfer_accuracy_spatial"] < perfect["label_transfer_accuracy_spatial"] - 0.1
    assert shuffled["label_transfer_accuracy_expression"] < perfect["label_transfer_accuracy_expression"] - 0.3
    assert shuffled["leiden_ari"] < 0.05 < perfect["leiden_ari"]
    assert abs(shuffled["expr_pearson_cell_median"]) < perfect["expr_pearson_cell_median"] - 0.3
    # shuffling keeps the shape and the distribution: those metrics need no correspondence and stay perfect
    assert shuffled["extent_ratio_worst"] == pytest.approx(1.0, abs=1e-5) and shuffled["expr_zero_fraction_abs_diff"] == 0


def test_shape_metrics_catch_a_collapsed_or_shrunk_tissue_that_ranks_distances_well(starmap_slice):
    """The failure the distance Spearman missed: cells ordered along one axis only (3D collapsing to a
    line), or the whole tissue at 40% of its size."""
    expression, positions, _, _ = starmap_slice
    centred = positions - positions.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    line = np.outer(centred @ vt[0], vt[0]) * 19 + positions.mean(0)
    collapsed = values_of(evaluate_sample(make_sample(starmap_slice, "expr_to_pos", generated_positions=line), EvaluationConfig())[0])
    assert collapsed["distance_spearman_median"] > 0.5  # looks fine by rank...
    assert collapsed["extent_ratio_axis2"] < 1e-3 and collapsed["extent_ratio_axis1"] > 10  # ...but is a line
    shrunk = values_of(evaluate_sample(make_sample(starmap_slice, "joint", expression, rotate(positions) * 0.4), EvaluationConfig())[0])
    assert shrunk["extent_ratio_worst"] == pytest.approx(0.4, rel=1e-4) and shrunk["distance_wasserstein_unit_rms"] > 0.3


def test_expr_to_pos_moran_compares_the_true_expression_on_both_graphs(starmap_slice):
    expression, positions, _, _ = starmap_slice
    order = np.random.default_rng(2).permutation(len(positions))
    table, details = evaluate_sample(make_sample(starmap_slice, "expr_to_pos", generated_positions=positions[order]), EvaluationConfig())
    shuffled = values_of(table)
    true_i = np.array(details["morans_i_corr"]["per_gene"]["true"])
    generated_i = np.array(details["morans_i_corr"]["per_gene"]["generated"])
    assert np.nanmax(np.abs(generated_i)) < 0.1 < np.nanmax(true_i)  # patterns vanish when cells are shuffled
    assert shuffled["morans_i_abs_diff"] == pytest.approx(np.nanmean(np.abs(true_i - generated_i)))


def test_big_slices_use_a_stated_seeded_sample_for_distance_and_cluster_metrics(starmap_slice):
    expression, positions, _, _ = starmap_slice
    rng = np.random.default_rng(3)
    config = EvaluationConfig(max_cells_exact=500, sample_size=300, seed=7)
    positional = make_sample(starmap_slice, "expr_to_pos", generated_positions=positions + rng.normal(scale=100, size=positions.shape))
    expressed = make_sample(starmap_slice, "pos_to_expr", expression + rng.normal(scale=0.5, size=expression.shape))
    table, details = evaluate_sample(positional, config)
    expression_details = evaluate_sample(expressed, config)[1]
    for name, how in [(n, details[n]) for n in ("distance_spearman_median", "contact_f1_q01")] + \
                     [(n, expression_details[n]) for n in ("leiden_ari", "label_transfer_accuracy_expression")]:
        assert how.get("sample_size", how.get("n_query_cells")) == 300, name
    assert details["distance_spearman_median"]["seed"] == 7 and details["distance_spearman_median"]["n_cells"] == 300
    assert details["knn_preservation_k10"]["n_cells"] == len(positions)  # O(n log n) metrics use every cell
    again, _ = evaluate_sample(positional, config)
    pd.testing.assert_frame_equal(table, again)  # fixed seed: same sample, same values
    exact = values_of(evaluate_sample(positional, EvaluationConfig())[0])
    assert values_of(table)["distance_spearman_median"] == pytest.approx(exact["distance_spearman_median"], abs=0.05)


def test_measured_genes_only_and_no_cell_types(starmap_slice):
    expression, positions, _, _ = starmap_slice
    measured = np.arange(expression.shape[1]) < 100
    garbage = expression.copy()
    garbage[:, ~measured] = 1e6  # unmeasured genes must not count
    table, details = evaluate_sample(make_sample(starmap_slice, "pos_to_expr", garbage, cell_types=False, measured=measured), EvaluationConfig())
    values = values_of(table)
    assert values["expr_mse"] == 0 and details["expr_mse"]["n_genes"] == 100
    assert not set(values) & (TYPED_EXPRESSION_METRICS | TYPED_POSITION_METRICS)


@pytest.mark.parametrize("spelling", ["None", "nan", "NaN", "", " ", None])
def test_unknown_cell_types_are_left_out_of_label_metrics_however_spelled(starmap_slice, tmp_path, spelling):
    """Issue 10: sample files spelled unknown cell types as the string 'None', which then counted as
    a cell type of its own in every label metric."""
    expression, positions, types, _ = starmap_slice
    types = types.astype(object).copy()
    unknown = np.arange(len(types)) % 3 == 0
    types[unknown] = spelling
    details = {}
    for mode in ("expr_to_pos", "pos_to_expr"):
        adata = make_sample(starmap_slice, mode, expression, rotate(positions))
        adata.obs["cell_type"] = pd.Categorical(types) if spelling is not None else pd.Series(types, index=adata.obs_names, dtype=object)
        path = tmp_path / f"s.{mode}.h5ad"
        adata.write_h5ad(path)  # through the file, as evaluate reads it
        details.update(evaluate_sample(ad.read_h5ad(path), EvaluationConfig())[1])
    assert details["nhood_enrichment_corr"]["n_cells_typed"] == int((~unknown).sum())
    names = details["nhood_enrichment_corr"]["zscores"]["types"]
    assert not {"None", "nan", "NaN", "", " "} & set(names) and len(names) == len(set(types[~unknown]))
    assert details["label_transfer_accuracy_expression"]["n_reference_cells"] == int((~unknown).sum())

    from alphastomics.report.render import load_sample  # the report colours them as unknown, not as a type

    shown = set(load_sample(path).cell_types)
    assert "unknown" in shown and not {"None", "nan", "NaN", "", " "} & shown


def test_embedding_hook_scores_leiden_clusters_of_an_embedding(starmap_slice):
    expression, positions, _, _ = starmap_slice
    adata = make_sample(starmap_slice, "pos_to_expr", expression)
    adata.obsm[EMBEDDING] = expression[:, np.argsort(expression.var(0))[-20:]]  # most variable genes stand in for an embedding
    values = values_of(evaluate_sample(adata, EvaluationConfig())[0])
    assert {"embedding_leiden_ari", "embedding_leiden_nmi", "embedding_leiden_accuracy"} <= set(values)
    assert values["embedding_leiden_ari"] > 0.05


@pytest.mark.parametrize("problem", ["missing_file", "not_h5ad", "no_spatial_pred", "no_expr_pred", "non_finite"])
def test_bad_sample_files_stop_with_a_message_naming_file_and_problem(starmap_slice, tmp_path, capsys, problem):
    sample = tmp_path / "s.joint.h5ad"
    adata = make_sample(starmap_slice, "joint", starmap_slice[0], starmap_slice[1])
    expected = {"missing_file": "not found", "not_h5ad": "not a readable h5ad", "no_spatial_pred": "obsm['spatial_pred']",
                "no_expr_pred": "layers['expr_pred']", "non_finite": "non-finite"}[problem]
    if problem == "not_h5ad":
        sample.write_text("cell\tx\n")
    elif problem == "no_spatial_pred":
        del adata.obsm["spatial_pred"]
    elif problem == "no_expr_pred":
        del adata.layers["expr_pred"]
    elif problem == "non_finite":
        adata.obsm["spatial_pred"][3, 0] = np.nan
    if problem not in ("missing_file", "not_h5ad"):
        adata.write_h5ad(sample)
    out = tmp_path / "m.tsv"
    assert cli(["evaluate", str(sample), "--out", str(out)]) == 1
    message = capsys.readouterr().err
    assert str(sample) in message and expected in message
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_unknown_mode_and_bad_gather_input_are_input_errors(starmap_slice, tmp_path):
    adata = make_sample(starmap_slice, "joint", starmap_slice[0], starmap_slice[1])
    adata.uns["alphastomics"]["mode"] = "sideways"
    with pytest.raises(InputError, match="mode"):
        sample_from_anndata(adata, source="x.h5ad")
    bad = tmp_path / "bad.tsv"
    bad.write_text("metric\tvalue\nexpr_mse\t1\n")
    with pytest.raises(InputError, match="bad.tsv: missing column"):
        from alphastomics.io.metric_tables import read_metric_table
        read_metric_table(bad)
    assert cli(["gather", str(tmp_path / "absent.tsv"), "--out", str(tmp_path / "all.tsv")]) == 1
    assert not (tmp_path / "all.tsv").exists()


def test_metric_details_example_in_the_formats_doc_matches_what_evaluate_writes(starmap_slice):
    """docs/FORMATS.md showed a `seed` key in its JSON example that evaluate never writes."""
    import re

    text = (Path(__file__).resolve().parents[1] / "docs/FORMATS.md").read_text(encoding="utf-8")
    section = text.split("## Metric tables", 1)[1]
    [example] = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, flags=re.S)]
    expression, positions, _, _ = starmap_slice
    _, details = evaluate_sample(make_sample(starmap_slice, "expr_to_pos", generated_positions=rotate(positions)), EvaluationConfig())
    for metric, documented in example.items():
        assert set(documented) == set(details[metric]), metric
        assert set(documented["sample"]) == set(details[metric]["sample"])


def _preprocessed_sample(starmap_dir, mode, expression=None, positions=None):
    """A sample of the preprocessed BZ14 slice whose model trained on BZ5 and BZ9."""
    from alphastomics.io.shards import load_slice

    data = load_slice(starmap_dir, "20180424_BZ14_control")
    obs = pd.DataFrame({"slice_id": data.slice_id, "cell_type": pd.Categorical(data.cell_types.astype(str))},
                       index=data.cell_ids.astype(str))
    adata = ad.AnnData(X=data.expression.copy(), obs=obs, var=pd.DataFrame({"measured": data.gene_mask}, index=data.genes))
    adata.layers["expr_pred"] = (data.expression if expression is None else expression).astype(np.float32)
    adata.obsm["spatial"] = data.coords[:, :2].astype(np.float32)
    adata.obsm["spatial_pred"] = (data.coords[:, :2] if positions is None else positions).astype(np.float32)
    adata.uns["alphastomics"] = {"mode": mode, "method": "alphastomics", "dataset": "starmap_mpfc", "slice_id": data.slice_id,
                                 "generated": GENERATED_BY_MODE[mode], "coordinate_frame": "per_slice",
                                 "train_slices": ["20180417_BZ5_control", "20180419_BZ9_control"]}
    return adata, data


def test_joint_gets_distribution_metrics_beside_real_training_slices(starmap_dir):
    """The true slice itself, passed off as a joint sample, is closer to the truth than either real
    training slice by every distribution metric; a shuffled one is further than both. No per-cell
    metric is written, even though here the cells happen to correspond."""
    adata, data = _preprocessed_sample(starmap_dir, "joint")
    adata.obsm["spatial_pred"] = rotate(adata.obsm["spatial"]).astype(np.float32)
    table, details = evaluate_sample(adata, EvaluationConfig(), reference_dir=starmap_dir)
    methods = set(table["method"])
    assert methods == {"alphastomics", "real:20180417_BZ5_control", "real:20180419_BZ9_control"}
    mine = values_of(table[table["method"] == "alphastomics"])
    assert not set(mine) & (POSITION_METRICS | EXPRESSION_METRICS | TYPED_EXPRESSION_METRICS)
    real = [values_of(table[table["method"] == m]) for m in sorted(methods - {"alphastomics"})]
    for metric in ("cell_type_composition_l1", "expr_energy_distance_pca", "expr_knn_two_sample_accuracy"):
        assert mine[metric] < min(r[metric] for r in real), metric
    assert mine["cell_type_classifier_accuracy_on_test"] > 0.5
    assert set(details["references"]) == methods - {"alphastomics"}

    rng = np.random.default_rng(0)
    noise = np.stack([rng.permutation(col) for col in data.expression.T], axis=1)
    shuffled, _ = _preprocessed_sample(starmap_dir, "joint", expression=noise, positions=data.coords[:, :2])
    worse = values_of(evaluate_sample(shuffled, EvaluationConfig(), reference_dir=starmap_dir)[0].query("method == 'alphastomics'"))
    for metric in ("cell_type_composition_l1", "expr_knn_two_sample_accuracy"):
        assert worse[metric] > max(r[metric] for r in real), metric


def test_a_joint_sample_of_several_draws_is_scored_by_the_mean_over_its_draws(starmap_dir, tmp_path):
    """Each draw scored as a one-draw file of its own, then averaged by hand, gives the table's
    figures; the reference rows are those of any single draw; a draws array of the wrong shape is
    an InputError naming the file."""
    rng = np.random.default_rng(1)
    adata, data = _preprocessed_sample(starmap_dir, "joint")
    true_xy = data.coords[:, :2]
    draws = [
        (data.expression, rotate(true_xy)),  # the true tissue, rotated
        (np.stack([rng.permutation(col) for col in data.expression.T], axis=1), true_xy * 0.5),  # noise, shrunk
        (np.clip(data.expression + rng.normal(scale=0.3, size=data.expression.shape), 0, None), true_xy + rng.normal(size=true_xy.shape)),
    ]
    adata.layers["expr_pred"] = draws[0][0].astype(np.float32)
    adata.obsm["spatial_pred"] = draws[0][1].astype(np.float32)
    adata.obsm["expr_pred_draws"] = np.stack([d[0] for d in draws], axis=1).astype(np.float32)
    adata.obsm["spatial_pred_draws"] = np.stack([d[1] for d in draws], axis=1).astype(np.float32)
    table, details = evaluate_sample(adata, EvaluationConfig(), reference_dir=starmap_dir)
    mine = values_of(table[table["method"] == "alphastomics"])

    singles = []
    for expression, positions in draws:
        single, _ = _preprocessed_sample(starmap_dir, "joint", expression=expression, positions=positions)
        singles.append(evaluate_sample(single, EvaluationConfig(), reference_dir=starmap_dir)[0])
    per_draw = [values_of(t[t["method"] == "alphastomics"]) for t in singles]
    for metric in ("cell_type_composition_l1", "expr_energy_distance_pca", "extent_ratio_worst", "morans_i_corr",
                   "nhood_enrichment_corr", "distance_wasserstein_unit_rms"):
        by_hand = [d[metric] for d in per_draw]
        assert mine[metric] == pytest.approx(np.mean(by_hand), rel=1e-6), metric
        assert details[metric]["per_draw"] == pytest.approx(by_hand, rel=1e-6), metric
        assert details[metric]["sd_over_draws"] == pytest.approx(np.std(by_hand, ddof=1), rel=1e-6), metric
    # the draws differ, so the mean is not the first draw's figure
    assert per_draw[1]["cell_type_composition_l1"] > per_draw[0]["cell_type_composition_l1"] + 0.1
    assert mine["cell_type_composition_l1"] != pytest.approx(per_draw[0]["cell_type_composition_l1"])
    real = table[table["method"] != "alphastomics"].reset_index(drop=True)
    assert real.equals(singles[1][singles[1]["method"] != "alphastomics"].reset_index(drop=True))

    broken = adata.copy()
    broken.obsm["spatial_pred_draws"] = broken.obsm["spatial_pred_draws"][:, :2]
    path = tmp_path / "BZ14.joint.h5ad"
    broken.write_h5ad(path)
    with pytest.raises(InputError, match=r"BZ14\.joint\.h5ad.*spatial_pred_draws"):
        sample_from_anndata(ad.read_h5ad(path), source=str(path))


def test_pos_to_expr_scores_the_posterior_mean_and_the_training_mean_predictor(starmap_dir):
    from alphastomics.io.shards import load_slice

    train = [load_slice(starmap_dir, s) for s in ("20180417_BZ5_control", "20180419_BZ9_control")]
    training_mean = np.concatenate([s.expression for s in train]).mean(0)
    adata, data = _preprocessed_sample(starmap_dir, "pos_to_expr")
    adata.layers["expr_pred"] = np.clip(data.expression + np.random.default_rng(0).normal(scale=0.5, size=data.expression.shape), 0, None)
    adata.layers["expr_pred_mean"] = np.broadcast_to(training_mean, data.expression.shape).astype(np.float32)
    table, _ = evaluate_sample(adata, EvaluationConfig(), reference_dir=starmap_dir)
    mine = values_of(table[table["method"] == "alphastomics"])
    baseline = values_of(table[table["method"] == "training_mean"])
    # the posterior-mean layer equal to the training mean scores exactly what the baseline row scores
    assert mine["expr_mean_mse"] == pytest.approx(baseline["expr_mse"], rel=1e-5)
    assert baseline["expr_mse"] == pytest.approx(float(((data.expression - training_mean) ** 2).mean()), rel=1e-4)
    assert mine["expr_mse"] != mine["expr_mean_mse"]
