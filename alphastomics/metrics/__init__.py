"""Metrics of generated vs true spatial transcriptomics, one concern per module.

- ``expression``: MSE, MAE, per-gene / per-cell Pearson and Spearman;
- ``geometry``: Procrustes disparity, Kabsch RSSD, pairwise-distance metrics (distance MSE,
  distance-row Spearman, contact precision/F1);
- ``neighbourhoods``: kNN preservation, cell-type neighbourhood enrichment, spatial label transfer;
- ``spatial``: Moran's I per gene;
- ``clusters``: leiden clusters vs cell types, expression label transfer (the cell itself does not vote);
- ``correlation``: how correlations that are undefined (a constant side) count;
- ``distribution``: sets of cells with no cell-to-cell correspondence (energy distance, kNN
  two-sample test, cell-type composition, zero fraction, per-gene spread).

``alphastomics.evaluate`` decides which metrics apply to a sample file and on which cells.
"""

from __future__ import annotations

from alphastomics.layout import CONSENSUS_PREFIX

# Which value of a metric is better: "higher", "lower", or "one" (a ratio, best at 1, judged in log
# scale). Keys are exact metric names or prefixes (``metric_direction`` picks the exact name, else
# the longest matching prefix).
METRIC_DIRECTION: dict[str, str] = {
    "expr_mse": "lower",
    "expr_mae": "lower",
    "expr_pearson_": "higher",
    "expr_spearman_": "higher",
    "expr_mean_mse": "lower",
    "expr_mean_mae": "lower",
    "expr_mean_pearson_": "higher",
    "expr_mean_spearman_": "higher",
    "expr_zero_fraction_abs_diff": "lower",
    "expr_negative_fraction": "lower",
    "expr_std_ratio_median": "one",
    "expr_energy_distance_pca": "lower",
    "expr_knn_two_sample_accuracy": "lower",
    "cell_type_composition_l1": "lower",
    "cell_type_composition_l1_typed": "lower",
    "cell_type_classifier_accuracy_on_test": "higher",
    "cell_type_drawn_accuracy": "higher",
    "extent_ratio_": "one",
    "distance_wasserstein_unit_rms": "lower",
    "nn_distance_ratio_median": "one",
    "nn_distance_wasserstein_rel": "lower",
    "density_spread_ratio": "one",
    "axis_profile_wasserstein_worst": "lower",
    "position_error_median": "lower",
    "place_inside_fraction": "higher",
    "place_true_to_generated_": "lower",
    "place_centre_error_abs": "lower",
    "procrustes_disparity": "lower",
    "rssd_kabsch": "lower",
    "distance_matrix_mse_unit_rms": "lower",
    "distance_spearman_": "higher",
    "contact_precision_": "higher",
    "contact_f1_": "higher",
    "knn_preservation_": "higher",
    "nhood_enrichment_corr": "higher",
    "morans_i_corr": "higher",
    "morans_i_abs_diff": "lower",
    "leiden_": "higher",  # leiden_ari, leiden_nmi, leiden_accuracy
    "embedding_leiden_": "higher",
    "label_transfer_accuracy_": "higher",
    "condition_type_accuracy": "higher",
    "condition_type_energy": "lower",
    "target_fraction_met": "higher",
    "target_energy_other_genes": "lower",
    "perturbation_shift_pearson": "higher",
    "perturbation_sign_agreement": "higher",
    "perturbation_shift_slope": "one",
}


def metric_direction(name: str) -> str | None:
    """``"higher"``, ``"lower"`` or ``"one"`` for a metric name, None when unknown."""
    if name.startswith(CONSENSUS_PREFIX):  # the consensus layout of expr_to_pos, scored as a draw is
        return metric_direction(name[len(CONSENSUS_PREFIX):])
    if name in METRIC_DIRECTION:
        return METRIC_DIRECTION[name]
    prefixes = [key for key in METRIC_DIRECTION if name.startswith(key)]
    return METRIC_DIRECTION[max(prefixes, key=len)] if prefixes else None
