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
from alphastomics.evaluate import EMBEDDING_KEY, GENERATED_BY_MODE, TABLE_COLUMNS, evaluate_sample, sample_from_anndata

SOURCE = Path(__file__).resolve().parents[1] / "resources/starmap_mpfc/starmap_mpfc_20180417_BZ5_control.h5ad"

EXPRESSION_METRICS = {f"expr_{c}_{a}_{s}" for c in ("pearson", "spearman") for a in ("gene", "cell") for s in ("median", "mean")} | {"expr_mse", "expr_mae"}
POSITION_METRICS = {
    "procrustes_disparity", "rssd_kabsch", "distance_matrix_mse_unit_rms", "distance_spearman_median", "distance_spearman_mean",
    "contact_precision_q01", "contact_f1_q01", "contact_precision_q10", "contact_f1_q10",
    "knn_preservation_k5", "knn_preservation_k10", "knn_preservation_k20",
}
MORAN_METRICS = {"morans_i_corr", "morans_i_abs_diff"}
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
        "expr_to_pos": POSITION_METRICS | MORAN_METRICS | TYPED_POSITION_METRICS,
        "pos_to_expr": EXPRESSION_METRICS | MORAN_METRICS | TYPED_EXPRESSION_METRICS,
        "joint": EXPRESSION_METRICS | POSITION_METRICS | MORAN_METRICS | TYPED_POSITION_METRICS | TYPED_EXPRESSION_METRICS,
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
        if "position" in GENERATED_BY_MODE[mode]:
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


def test_rotated_mirrored_copy_scores_perfectly_and_shuffled_cells_poorly(starmap_slice):
    expression, positions, _, _ = starmap_slice
    config = EvaluationConfig()
    perfect = values_of(evaluate_sample(make_sample(starmap_slice, "joint", expression, rotate(positions, mirror=True)), config)[0])
    assert perfect["procrustes_disparity"] == pytest.approx(0, abs=1e-6)
    assert perfect["knn_preservation_k10"] > 0.99 and perfect["distance_spearman_median"] > 0.9999
    assert perfect["contact_f1_q01"] > 0.99 and perfect["nhood_enrichment_corr"] > 0.99
    assert perfect["expr_mse"] == 0 and perfect["expr_pearson_gene_median"] == pytest.approx(1.0)
    assert perfect["morans_i_abs_diff"] < 1e-3  # same expression, same graph up to float32 rounding of coordinates

    order = np.random.default_rng(1).permutation(len(positions))
    shuffled = values_of(evaluate_sample(make_sample(starmap_slice, "joint", expression[order], positions[order]), config)[0])
    assert shuffled["procrustes_disparity"] > 0.9
    assert shuffled["knn_preservation_k10"] < 0.05 and abs(shuffled["distance_spearman_median"]) < 0.1
    assert shuffled["label_transfer_accuracy_spatial"] < perfect["label_transfer_accuracy_spatial"] - 0.1
    assert shuffled["label_transfer_accuracy_expression"] < perfect["label_transfer_accuracy_expression"] - 0.3
    assert shuffled["leiden_ari"] < 0.05 < perfect["leiden_ari"]
    assert abs(shuffled["expr_pearson_cell_median"]) < perfect["expr_pearson_cell_median"] - 0.3


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
    adata = make_sample(starmap_slice, "joint", expression + rng.normal(scale=0.5, size=expression.shape),
                        positions + rng.normal(scale=100, size=positions.shape))
    config = EvaluationConfig(max_cells_exact=500, sample_size=300, seed=7)
    table, details = evaluate_sample(adata, config)
    for name in ("distance_spearman_median", "contact_f1_q01", "leiden_ari", "label_transfer_accuracy_expression"):
        how = details[name]
        assert how.get("sample_size", how.get("n_query_cells")) == 300, name
    assert details["distance_spearman_median"]["seed"] == 7 and details["distance_spearman_median"]["n_cells"] == 300
    assert details["knn_preservation_k10"]["n_cells"] == len(positions)  # O(n log n) metrics use every cell
    again, _ = evaluate_sample(adata, config)
    pd.testing.assert_frame_equal(table, again)  # fixed seed: same sample, same values
    exact = values_of(evaluate_sample(adata, EvaluationConfig())[0])
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
    adata = make_sample(starmap_slice, "joint", expression, rotate(positions))
    adata.obs["cell_type"] = pd.Categorical(types) if spelling is not None else pd.Series(types, index=adata.obs_names, dtype=object)
    path = tmp_path / "s.joint.h5ad"
    adata.write_h5ad(path)  # through the file, as evaluate reads it
    table, details = evaluate_sample(ad.read_h5ad(path), EvaluationConfig())
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
    adata.obsm[EMBEDDING_KEY] = expression[:, np.argsort(expression.var(0))[-20:]]  # most variable genes stand in for an embedding
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
        from alphastomics.evaluate import read_metric_table
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
