"""Each metric of ``alphastomics.metrics`` against a reference (scipy, sklearn, scanpy, or a brute-force
numpy formula on small data), plus properties that a wrong implementation would break: perfect
predictions score perfectly, shuffled ones badly, and coordinate metrics ignore rotation."""

from collections import Counter
from itertools import permutations

import numpy as np
import pytest
from scipy.spatial import procrustes
from scipy.spatial.distance import pdist, squareform
from scipy.spatial.transform import Rotation
from scipy.stats import pearsonr, rankdata, spearmanr
from sklearn.metrics import f1_score, mean_absolute_error, mean_squared_error, precision_score

from alphastomics.metrics import METRIC_DIRECTION, clusters, expression, geometry, metric_direction, neighbourhoods, spatial


def _rotation(dims: int, seed: int) -> np.ndarray:
    if dims == 2:
        angle = np.random.default_rng(seed).uniform(0, 2 * np.pi)
        return np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return Rotation.random(random_state=seed).as_matrix()


def _tissue(n: int = 300, dims: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 100, size=(n, dims))


# ----------------------------------------------------------------------------------------------
# expression


@pytest.fixture
def expression_pair():
    rng = np.random.default_rng(1)
    true = rng.gamma(2.0, size=(60, 12))
    generated = true + rng.normal(scale=0.8, size=true.shape)
    true[:, 3] = 1.5  # a constant gene: its correlations are undefined and must be skipped
    generated[7, :] = 0.0  # a constant generated cell: its undefined correlations count as 0
    true[:5, 0] = true[5, 0]  # ties for Spearman
    return true, generated


def test_expression_metrics_match_scipy_and_sklearn(expression_pair):
    true, generated = expression_pair
    values, how = expression.expression_metrics(true, generated)
    assert values["expr_mse"] == pytest.approx(mean_squared_error(true, generated), rel=1e-12)
    assert values["expr_mae"] == pytest.approx(mean_absolute_error(true, generated), rel=1e-12)
    for name, ref in (("pearson", pearsonr), ("spearman", spearmanr)):
        per_gene = [ref(true[:, j], generated[:, j])[0] for j in range(true.shape[1]) if j != 3]
        per_cell = [0.0 if i == 7 else ref(true[i], generated[i])[0] for i in range(true.shape[0])]
        assert values[f"expr_{name}_gene_median"] == pytest.approx(np.median(per_gene), abs=1e-10)
        assert values[f"expr_{name}_gene_mean"] == pytest.approx(np.mean(per_gene), abs=1e-10)
        assert values[f"expr_{name}_cell_median"] == pytest.approx(np.median(per_cell), abs=1e-10)
        assert values[f"expr_{name}_cell_mean"] == pytest.approx(np.mean(per_cell), abs=1e-10)
    assert how["expr_pearson_gene_mean"]["n_genes_true_constant_left_out"] == 1
    assert how["expr_pearson_gene_mean"]["n_genes_generated_constant_counted_as_0"] == 0
    assert how["expr_spearman_cell_median"]["n_cells_generated_constant_counted_as_0"] == 1
    assert how["expr_spearman_cell_median"]["n_cells_used"] == 60


def test_expression_chunking_gives_the_same_values(expression_pair, monkeypatch):
    true, generated = expression_pair
    whole, _ = expression.expression_metrics(true, generated)
    monkeypatch.setattr(expression, "_CHUNK_ELEMENTS", 70)  # blocks of one or two genes / cells
    chunked, _ = expression.expression_metrics(true, generated)
    for name in whole:
        assert chunked[name] == pytest.approx(whole[name], abs=1e-12), name


def test_expression_perfect_and_shuffled_predictions():
    rng = np.random.default_rng(2)
    true = rng.gamma(2.0, size=(200, 20))
    perfect, _ = expression.expression_metrics(true, true.copy())
    assert perfect["expr_mse"] == 0 and perfect["expr_mae"] == 0
    assert perfect["expr_pearson_gene_median"] == pytest.approx(1.0) and perfect["expr_spearman_cell_mean"] == pytest.approx(1.0)
    shuffled, _ = expression.expression_metrics(true, true[rng.permutation(200)])
    assert abs(shuffled["expr_pearson_gene_median"]) < 0.2
    assert abs(shuffled["expr_spearman_gene_mean"]) < 0.2


def test_all_constant_correlations_are_nan_not_errors():
    values, _ = expression.expression_metrics(np.ones((10, 3)), np.ones((10, 3)))
    assert np.isnan(values["expr_pearson_gene_median"]) and values["expr_mse"] == 0


def test_a_collapsed_prediction_cannot_score_higher_than_a_varied_one():
    """Issue 10: a constant generated gene has an undefined correlation; dropping it from the median
    let a prediction that collapsed on its worst genes score higher than an honest one."""
    rng = np.random.default_rng(3)
    true = rng.gamma(2.0, size=(100, 10))
    good = true + rng.normal(scale=0.3, size=true.shape)
    weak = good.copy()
    weak[:, :4] = rng.normal(size=(100, 4))  # four genes predicted badly, but varied
    collapsed = good.copy()
    collapsed[:, :4] = true[:, :4].mean(axis=0)  # the same four genes collapsed to a constant
    weak_values, _ = expression.expression_metrics(true, weak)
    collapsed_values, how = expression.expression_metrics(true, collapsed)
    for name in ("expr_pearson_gene_median", "expr_pearson_gene_mean", "expr_spearman_gene_mean"):
        assert collapsed_values[name] <= weak_values[name] + 0.1, name
    per_gene = [0.0] * 4 + [pearsonr(true[:, j], collapsed[:, j])[0] for j in range(4, 10)]
    assert collapsed_values["expr_pearson_gene_mean"] == pytest.approx(np.mean(per_gene), abs=1e-10)
    assert how["expr_pearson_gene_mean"]["n_genes_generated_constant_counted_as_0"] == 4
    flat, _ = expression.expression_metrics(true, np.tile(true.mean(axis=0), (100, 1)))
    assert flat["expr_pearson_gene_median"] == 0 and flat["expr_spearman_gene_mean"] == 0


def test_distance_spearman_counts_a_collapsed_cloud_as_zero():
    true = _tissue(60, 2, seed=4)
    values, how, per_cell = geometry.distance_metrics(true, np.zeros_like(true), [0.1])
    assert values["distance_spearman_median"] == 0 and values["distance_spearman_mean"] == 0
    assert how["distance_spearman_median"]["n_cells_generated_constant_counted_as_0"] == 60
    partly = _tissue(60, 2, seed=5)
    partly[1:] = partly[0]  # all but one cell on one point: the rows of those cells are not constant
    values, how, _ = geometry.distance_metrics(true, partly, [0.1])
    assert np.isfinite(values["distance_spearman_mean"])


def test_morans_i_of_a_constant_generated_gene_counts_as_no_autocorrelation():
    rng = np.random.default_rng(6)
    points = _tissue(300, 2, seed=6)
    values = np.stack([np.sin(points[:, 0] / s) + rng.normal(scale=0.3, size=300) for s in (5, 10, 20, 40)], axis=1)
    generated = values.copy()
    generated[:, 0] = 1.0  # the most patterned gene collapsed
    result, how, per_gene = spatial.morans_i_agreement(points, values, points, generated, 10, "same")
    assert per_gene["generated"][0] == 0.0
    assert result["morans_i_abs_diff"] == pytest.approx(np.mean(np.abs(per_gene["true"] - per_gene["generated"])))
    assert how["morans_i_abs_diff"]["n_genes_generated_constant_counted_as_0"] == 1
    flat, _, _ = spatial.morans_i_agreement(points, values, points, np.ones_like(values), 10, "same")
    assert flat["morans_i_corr"] == 0  # no pattern left at all: uncorrelated, not undefined


# ----------------------------------------------------------------------------------------------
# coordinates


@pytest.mark.parametrize("dims", [2, 3])
def test_procrustes_disparity_equals_scipy_and_closed_form(dims):
    rng = np.random.default_rng(dims)
    true = _tissue(200, dims, seed=dims)
    generated = true + rng.normal(scale=8, size=true.shape)
    ours = geometry.procrustes_disparity(true, generated)
    assert ours == pytest.approx(procrustes(true, generated)[2], abs=1e-12)
    # Closed form: with both sets centred and of unit Frobenius norm, disparity = 1 - (sum of singular values of A^T B)^2.
    a = (true - true.mean(0)) / np.linalg.norm(true - true.mean(0))
    b = (generated - generated.mean(0)) / np.linalg.norm(generated - generated.mean(0))
    assert ours == pytest.approx(1 - np.linalg.svd(a.T @ b, compute_uv=False).sum() ** 2, abs=1e-10)
    assert 0.01 < ours < 0.5


@pytest.mark.parametrize("dims", [2, 3])
def test_coordinate_metrics_ignore_rotation_translation_and_reflection(dims):
    true = _tissue(150, dims, seed=3)
    moved = true @ _rotation(dims, seed=4).T + 17.0
    mirrored = moved * np.r_[-1.0, np.ones(dims - 1)]
    for generated in (moved, mirrored):
        assert geometry.procrustes_disparity(true, generated) == pytest.approx(0, abs=1e-12)
        rssd, aligned = geometry.kabsch_rssd(true, generated)
        assert rssd == pytest.approx(0, abs=1e-8)
        np.testing.assert_allclose(aligned, true, atol=1e-8)
    assert geometry.procrustes_disparity(true, np.zeros_like(true)) == 1.0  # collapsed prediction


def test_kabsch_rssd_equals_brute_force_search_over_rotations_and_reflections():
    rng = np.random.default_rng(5)
    true = _tissue(120, 2, seed=5)
    generated = true @ _rotation(2, seed=6).T + rng.normal(scale=6, size=true.shape)
    ours, _ = geometry.kabsch_rssd(true, generated)
    t, g = true - true.mean(0), generated - generated.mean(0)
    best = np.inf
    for angle in np.linspace(0, 2 * np.pi, 20000, endpoint=False):
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        for mirror in (np.eye(2), np.diag([1.0, -1.0])):
            best = min(best, np.sqrt(((g @ mirror @ rot - t) ** 2).sum()))
    assert ours <= best + 1e-9  # the optimum cannot be beaten by any rotation...
    assert ours == pytest.approx(best, rel=1e-4)  # ...and the grid gets within its resolution of it
    # Brute-force RSSD of the alignment itself.
    assert ours == pytest.approx(np.sqrt(((geometry.kabsch_rssd(true, generated)[1] - true) ** 2).sum()), rel=1e-12)


def test_rank_rows_equals_rankdata_with_ties():
    rng = np.random.default_rng(7)
    matrix = rng.integers(0, 6, size=(30, 25)).astype(float)  # many ties
    matrix[::3] = rng.normal(size=(10, 25))  # some rows without ties (fast path)
    np.testing.assert_array_equal(geometry.rank_rows(matrix), rankdata(matrix, axis=1))


def _brute_force_distance_metrics(true, generated, quantiles):
    a, b = geometry.scale_to_unit_rms(true), geometry.scale_to_unit_rms(generated)
    dt, dg = pdist(a), pdist(b)
    square_t, square_g = squareform(dt), squareform(dg)
    n = len(a)
    off = ~np.eye(n, dtype=bool)
    rows = [spearmanr(square_t[i][off[i]], square_g[i][off[i]])[0] for i in range(n)]
    out = {
        "distance_matrix_mse_unit_rms": np.mean((dt - dg) ** 2),
        "distance_spearman_median": np.nanmedian(rows),
        "distance_spearman_mean": np.nanmean(rows),
    }
    for q in quantiles:
        threshold = np.quantile(dt, q)
        out[geometry.contact_name("precision", q)] = precision_score(dt <= threshold, dg <= threshold, zero_division=0)
        out[geometry.contact_name("f1", q)] = f1_score(dt <= threshold, dg <= threshold, zero_division=0)
    return out


@pytest.mark.parametrize("dims", [2, 3])
def test_distance_metrics_equal_brute_force_with_scipy_and_sklearn(dims):
    rng = np.random.default_rng(8)
    true = _tissue(180, dims, seed=8)
    generated = true @ _rotation(dims, 9).T * 3.0 + rng.normal(scale=15, size=true.shape)
    generated[10] = generated[11]  # duplicated points: ties in distance rows
    quantiles = [0.01, 0.1]
    ours, how, per_cell = geometry.distance_metrics(true, generated, quantiles, rows_per_block=7)
    ref = _brute_force_distance_metrics(true, generated, quantiles)
    assert set(ours) == set(ref)
    for name, value in ref.items():
        assert ours[name] == pytest.approx(value, abs=1e-10), name
    assert 0.3 < ours["distance_spearman_median"] < 0.99
    assert len(per_cell) == 180 and how["contact_precision_q01"]["quantile"] == 0.01


def test_distance_metrics_perfect_for_a_rotated_rescaled_copy_and_poor_for_a_shuffle():
    true = _tissue(250, 2, seed=10)
    perfect, _, _ = geometry.distance_metrics(true, true @ _rotation(2, 11).T * 0.01 + 5, [0.01, 0.1])
    assert perfect["distance_matrix_mse_unit_rms"] == pytest.approx(0, abs=1e-20)
    assert perfect["distance_spearman_median"] == pytest.approx(1.0)
    assert perfect["contact_precision_q01"] == 1.0 and perfect["contact_f1_q10"] == 1.0
    shuffled, _, _ = geometry.distance_metrics(true, true[np.random.default_rng(12).permutation(250)], [0.01, 0.1])
    assert abs(shuffled["distance_spearman_median"]) < 0.15
    assert shuffled["contact_precision_q01"] < 0.1 and shuffled["contact_f1_q10"] < 0.25
    assert shuffled["distance_matrix_mse_unit_rms"] > 0.5


# ----------------------------------------------------------------------------------------------
# neighbourhoods


def _brute_force_knn(points, k):
    distances = squareform(pdist(points))
    np.fill_diagonal(distances, np.inf)
    return np.argsort(distances, axis=1, kind="stable")[:, :k]


def test_knn_preservation_equals_brute_force():
    rng = np.random.default_rng(13)
    true = _tissue(220, 2, seed=13)
    generated = true + rng.normal(scale=4, size=true.shape)
    ours, how = neighbourhoods.knn_preservation(true, generated, [5, 10, 20])
    for k in (5, 10, 20):
        t, g = _brute_force_knn(true, k), _brute_force_knn(generated, k)
        ref = np.mean([len(set(t[i]) & set(g[i])) / k for i in range(len(true))])
        assert ours[f"knn_preservation_k{k}"] == pytest.approx(ref, abs=1e-12)
        assert how[f"knn_preservation_k{k}"]["k"] == k
    assert 0.2 < ours["knn_preservation_k10"] < 0.95


@pytest.mark.parametrize("dims", [2, 3])
def test_knn_preservation_one_for_rotated_copy_and_chance_for_shuffle(dims):
    true = _tissue(400, dims, seed=14)
    rotated, _ = neighbourhoods.knn_preservation(true, true @ _rotation(dims, 15).T * 2.5 - 3, [5, 10, 20])
    assert all(v == pytest.approx(1.0) for v in rotated.values())
    shuffled, _ = neighbourhoods.knn_preservation(true, true[np.random.default_rng(16).permutation(400)], [10])
    assert shuffled["knn_preservation_k10"] < 0.06  # chance level is k / n = 0.025


def test_knn_preservation_skips_k_not_below_cell_count():
    true = _tissue(8, 2)
    values, _ = neighbourhoods.knn_preservation(true, true, [5, 10])
    assert list(values) == ["knn_preservation_k5"]


def _regional_types(points: np.ndarray, n_types: int = 4) -> np.ndarray:
    """Cell types laid out in vertical bands, as layers of a tissue."""
    return np.minimum((points[:, 0] / 100 * n_types).astype(int), n_types - 1)


def test_nhood_enrichment_zscores_equal_brute_force_loops():
    points = _tissue(120, 2, seed=17)
    types = _regional_types(points, 3)
    neighbours = neighbourhoods.knn_indices(points, 6)
    ours = neighbourhoods.nhood_enrichment_zscores(neighbours, types, 3, n_permutations=30, seed=1)

    def counts(labels):
        table = np.zeros((3, 3))
        for i, row in enumerate(neighbours):
            for j in row:
                table[labels[i], labels[j]] += 1
        return table

    rng = np.random.default_rng(1)  # the same permutations, in the same order
    permuted = np.array([counts(rng.permutation(types)) for _ in range(30)])
    ref = (counts(types) - permuted.mean(0)) / permuted.std(0)
    np.testing.assert_allclose(ours, ref, atol=1e-12)
    assert np.all(np.diag(ours) > 2)  # banded types are their own neighbours far above chance


def test_nhood_enrichment_agreement_high_for_rotation_low_for_shuffle():
    true = _tissue(600, 2, seed=18)
    types = _regional_types(true, 5)
    rotated, how, _ = neighbourhoods.nhood_enrichment_agreement(true, true @ _rotation(2, 19).T, types, 10, 50, 0)
    assert rotated["nhood_enrichment_corr"] == pytest.approx(1.0)
    shuffled, _, _ = neighbourhoods.nhood_enrichment_agreement(
        true, true[np.random.default_rng(20).permutation(600)], types, 10, 50, 0)
    assert shuffled["nhood_enrichment_corr"] < 0.5
    assert how["nhood_enrichment_corr"]["n_permutations"] == 50


def test_spatial_label_transfer_equals_brute_force_majority_vote():
    points = _tissue(200, 2, seed=21)
    rng = np.random.default_rng(21)
    types = np.where(rng.uniform(size=200) < 0.3, rng.integers(0, 4, 200), _regional_types(points, 4))
    ours = neighbourhoods.spatial_label_transfer_accuracy(points, types, 7)
    neighbours = _brute_force_knn(points, 7)
    hits = 0
    for i, row in enumerate(neighbours):
        votes = Counter(types[row])
        top = max(votes.values())
        hits += min(label for label, c in votes.items() if c == top) == types[i]
    assert ours == pytest.approx(hits / 200)
    shuffled = neighbourhoods.spatial_label_transfer_accuracy(points[rng.permutation(200)], types, 7)
    assert shuffled < ours - 0.3


# ----------------------------------------------------------------------------------------------
# Moran's I


@pytest.mark.filterwarnings("ignore:1 variables were constant")
def test_morans_i_equals_scanpy_on_the_same_graph(monkeypatch):
    import scanpy as sc

    rng = np.random.default_rng(22)
    points = _tissue(400, 2, seed=22)
    values = np.c_[
        points[:, 0] * 0.1 + rng.normal(scale=0.5, size=400),  # spatial gradient
        rng.normal(size=400),  # noise
        np.sin(points[:, 1] / 10),  # periodic pattern
        np.full(400, 2.0),  # constant: undefined
        rng.poisson(0.3, size=400),  # sparse counts
    ]
    weights = spatial.knn_weights(points, 10)
    assert np.allclose(np.asarray(weights.sum(axis=1)).ravel(), 1.0) and weights.diagonal().sum() == 0
    assert (np.diff(weights.indptr) == 10).all()
    ours = spatial.morans_i(weights, values)
    reference = sc.metrics.morans_i(weights, values.T.copy())
    np.testing.assert_allclose(ours[[0, 1, 2, 4]], reference[[0, 1, 2, 4]], atol=1e-6)
    assert np.isnan(ours[3])
    assert ours[0] > 0.5 and abs(ours[1]) < 0.1 and ours[2] > 0.5
    monkeypatch.setattr(spatial, "_GENES_PER_BLOCK", 2)  # blocks of genes give the same values
    np.testing.assert_allclose(spatial.morans_i(weights, values), ours, equal_nan=True, atol=1e-14)


def test_morans_i_agreement_perfect_for_same_data_and_poor_for_shuffled_cells():
    rng = np.random.default_rng(23)
    points = _tissue(500, 2, seed=23)
    # genes with spatial patterns of varying strength, so their Moran's I differ
    values = np.stack([np.sin(points[:, 0] / s) + rng.normal(scale=0.5, size=500) for s in np.linspace(3, 40, 12)], axis=1)
    same, how, per_gene = spatial.morans_i_agreement(points, values, points, values.copy(), 10, "same")
    assert same["morans_i_corr"] == pytest.approx(1.0) and same["morans_i_abs_diff"] == pytest.approx(0.0, abs=1e-15)
    shuffled, _, per_gene = spatial.morans_i_agreement(points, values, points, values[rng.permutation(500)], 10, "same")
    assert np.abs(per_gene["generated"]).max() < 0.15 and shuffled["morans_i_abs_diff"] > 0.3
    assert how["morans_i_corr"]["k"] == 10


# ----------------------------------------------------------------------------------------------
# clusters


def test_hungarian_accuracy_equals_brute_force_over_matchings():
    rng = np.random.default_rng(24)
    types = rng.integers(0, 3, size=90)
    clustered = np.where(rng.uniform(size=90) < 0.7, (types + 1) % 3, rng.integers(0, 4, size=90))  # 4 clusters
    best = 0
    for assignment in permutations(range(4), 3):  # type t <-> cluster assignment[t]
        best = max(best, sum(np.sum((types == t) & (clustered == c)) for t, c in enumerate(assignment)))
    assert clusters.hungarian_accuracy(types, clustered) == pytest.approx(best / 90)
    assert clusters.hungarian_accuracy(types, (types + 2) % 3) == 1.0  # renamed clusters


def test_leiden_recovers_separated_cell_types_and_is_deterministic():
    rng = np.random.default_rng(25)
    types = np.repeat(np.arange(4), 150)
    profiles = rng.gamma(2.0, size=(4, 30)) * 3
    matrix = profiles[types] + rng.normal(size=(600, 30))
    labels, how = clusters.leiden_clusters(matrix, resolution=0.3, seed=0)
    scores = clusters.cluster_agreement(types, labels, "leiden")
    assert scores["leiden_ari"] > 0.9 and scores["leiden_nmi"] > 0.9 and scores["leiden_accuracy"] > 0.9
    again, _ = clusters.leiden_clusters(matrix, resolution=0.3, seed=0)
    np.testing.assert_array_equal(labels, again)
    noise = clusters.cluster_agreement(types, clusters.leiden_clusters(rng.normal(size=(600, 30)), 0.3, 0)[0], "leiden")
    assert noise["leiden_ari"] < 0.1
    assert how["n_pcs"] == 29 and how["seed"] == 0


def test_expression_label_transfer_high_for_noisy_copy_and_chance_for_shuffle():
    rng = np.random.default_rng(26)
    types = np.repeat(np.arange(3), 100)
    true = rng.gamma(2.0, size=(3, 20))[types] * 2 + rng.normal(size=(300, 20))
    noisy, how = clusters.expression_label_transfer_accuracy(true, true + rng.normal(scale=0.5, size=true.shape), types, 15, 0)
    shuffled, _ = clusters.expression_label_transfer_accuracy(true, true[rng.permutation(300)], types, 15, 0)
    assert noisy > 0.9 and shuffled < 0.5
    sampled, how = clusters.expression_label_transfer_accuracy(true, true, types, 15, 0, query_cells=np.arange(0, 300, 3))
    assert sampled == 1.0 and how["n_query_cells"] == 100 and how["n_reference_cells"] == 300


def test_expression_label_transfer_does_not_let_a_cell_vote_for_itself():
    """Issue 10: a generated profile close to its own true profile found that cell among its
    neighbours and voted with its own label; with labels unrelated to expression that is 100%."""
    rng = np.random.default_rng(27)
    true = rng.normal(size=(400, 10))
    types = rng.integers(0, 4, size=400)  # no relation to expression: chance is 1/4
    for k in (1, 5):
        accuracy, how = clusters.expression_label_transfer_accuracy(true, true.copy(), types, k, 0)
        assert accuracy < 0.4, k
        assert "itself" in how["classifier"]
    query = np.arange(0, 400, 4)
    sampled, _ = clusters.expression_label_transfer_accuracy(true, true.copy(), types, 1, 0, query_cells=query)
    assert sampled < 0.4


def test_expression_label_transfer_equals_brute_force_majority_of_other_cells():
    rng = np.random.default_rng(28)
    types = rng.integers(0, 3, size=120)
    true = rng.normal(size=(120, 6)) + types[:, None]
    generated = true + rng.normal(scale=0.5, size=true.shape)
    accuracy, how = clusters.expression_label_transfer_accuracy(true, generated, types, 7, 0)
    from sklearn.decomposition import PCA

    pca = PCA(n_components=how["n_pcs"], random_state=0).fit(true)
    reference, query = pca.transform(true), pca.transform(generated)
    hits = 0
    for i in range(120):
        distances = np.linalg.norm(reference - query[i], axis=1)
        distances[i] = np.inf  # the cell itself does not vote
        votes = np.bincount(types[np.argsort(distances, kind="stable")[:7]], minlength=3)
        hits += int(np.argmax(votes) == types[i])
    assert accuracy == pytest.approx(hits / 120)


# ----------------------------------------------------------------------------------------------
# directions


def test_every_direction_is_higher_lower_or_one_and_prefixes_resolve():
    assert set(METRIC_DIRECTION.values()) == {"higher", "lower", "one"}
    assert metric_direction("extent_ratio_axis2") == "one" and metric_direction("expr_mean_mse") == "lower"
    assert metric_direction("knn_preservation_k10") == "higher"
    assert metric_direction("contact_f1_q01") == "higher"
    assert metric_direction("expr_mse") == "lower"
    assert metric_direction("morans_i_abs_diff") == "lower"
    assert metric_direction("embedding_leiden_ari") == "higher"
    assert metric_direction("n_cells") is None
