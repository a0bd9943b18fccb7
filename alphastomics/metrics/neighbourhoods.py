"""Neighbourhood metrics: kNN preservation, cell-type neighbourhood enrichment agreement, spatial label transfer.

Every graph here is the Euclidean k-nearest-neighbour graph of a point set, each cell excluded
from its own neighbours (``sklearn.neighbors.NearestNeighbors``, kd-tree: O(n log n), so these run
on all cells of a slice).
"""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors


def knn_indices(points: np.ndarray, k: int) -> np.ndarray:
    """(n, k) indices of each point's k nearest other points, nearest first."""
    model = NearestNeighbors(n_neighbors=k).fit(np.asarray(points, dtype=np.float64))
    return model.kneighbors(return_distance=False)  # without X: each point is left out of its own list


def neighbour_overlap(true_neighbours: np.ndarray, generated_neighbours: np.ndarray) -> np.ndarray:
    """Per cell, the fraction of its true neighbours that are among its generated neighbours."""
    k = true_neighbours.shape[1]
    # (n, k, k) comparison: fine for the k <= 20 used here, and vectorised over cells.
    hits = (true_neighbours[:, :, None] == generated_neighbours[:, None, :]).any(axis=2)
    return hits.sum(axis=1) / k


def knn_preservation(true: np.ndarray, generated: np.ndarray, ks: list[int]) -> tuple[dict[str, float], dict[str, dict]]:
    """Mean over cells of the fraction of its k nearest true neighbours found among its k nearest generated ones.

    Values of k not smaller than the number of cells are skipped.
    """
    n = len(true)
    usable = sorted(k for k in ks if 0 < k < n)
    if not usable:
        return {}, {}
    k_max = usable[-1]
    true_neighbours = knn_indices(true, k_max)
    generated_neighbours = knn_indices(generated, k_max)
    values, how = {}, {}
    for k in usable:
        name = f"knn_preservation_k{k}"
        # Neighbour lists are sorted by distance, so the first k columns are the k nearest.
        values[name] = float(neighbour_overlap(true_neighbours[:, :k], generated_neighbours[:, :k]).mean())
        how[name] = {
            "k": k,
            "graph": "euclidean kNN (sklearn NearestNeighbors) on obsm['spatial'] vs on obsm['spatial_pred'], self excluded",
            "formula": "mean over cells of |true kNN & generated kNN| / k",
            "n_cells": n,
        }
    return values, how


def neighbour_type_counts(neighbours: np.ndarray, type_codes: np.ndarray, n_types: int) -> np.ndarray:
    """(types, types) count of directed kNN edges from a cell of type a to a neighbour of type b."""
    source = np.repeat(type_codes, neighbours.shape[1])
    target = type_codes[neighbours.ravel()]
    return np.bincount(source * n_types + target, minlength=n_types * n_types).reshape(n_types, n_types).astype(np.float64)


def nhood_enrichment_zscores(
    neighbours: np.ndarray, type_codes: np.ndarray, n_types: int, n_permutations: int, seed: int
) -> np.ndarray:
    """Cell-type neighbourhood enrichment z-scores, as squidpy.gr.nhood_enrichment defines them.

    z = (observed edge count - mean over label permutations) / std over permutations; NaN where
    the permutations never vary the count.
    """
    rng = np.random.default_rng(seed)
    observed = neighbour_type_counts(neighbours, type_codes, n_types)
    permuted = np.stack([
        neighbour_type_counts(neighbours, rng.permutation(type_codes), n_types) for _ in range(n_permutations)
    ])
    std = permuted.std(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (observed - permuted.mean(axis=0)) / std
    z[std == 0] = np.nan
    return z


def nhood_enrichment_agreement(
    true: np.ndarray, generated: np.ndarray, type_codes: np.ndarray, k: int, n_permutations: int, seed: int
) -> tuple[dict[str, float], dict[str, dict], dict[str, np.ndarray]]:
    """Pearson correlation of the enrichment z-score matrices on the true and on the generated kNN graph.

    Both use the same sequence of label permutations (same seed), so permutation noise is shared.
    Returns (values, how, {"true": z, "generated": z}).
    """
    n_types = int(type_codes.max()) + 1
    k = min(k, len(true) - 1)
    z_true = nhood_enrichment_zscores(knn_indices(true, k), type_codes, n_types, n_permutations, seed)
    z_generated = nhood_enrichment_zscores(knn_indices(generated, k), type_codes, n_types, n_permutations, seed)
    finite = np.isfinite(z_true) & np.isfinite(z_generated)
    if finite.sum() >= 2 and np.ptp(z_true[finite]) > 0 and np.ptp(z_generated[finite]) > 0:
        corr = float(np.corrcoef(z_true[finite], z_generated[finite])[0, 1])
    else:
        corr = float("nan")
    how = {
        "nhood_enrichment_corr": {
            "formula": "Pearson correlation over (type, type) entries of the neighbourhood enrichment z-score matrices, true vs generated coordinates",
            "z_score": "(observed directed kNN edge count - permutation mean) / permutation std, as squidpy.gr.nhood_enrichment",
            "k": k,
            "n_permutations": n_permutations,
            "seed": seed,
            "n_types": n_types,
            "n_entries_used": int(finite.sum()),
            "n_cells": len(true),
        }
    }
    return {"nhood_enrichment_corr": corr}, how, {"true": z_true, "generated": z_generated}


def majority_vote(neighbour_labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Most frequent label per row; ties go to the smallest label code (as sklearn's KNeighborsClassifier)."""
    n, k = neighbour_labels.shape
    flat = np.repeat(np.arange(n), k) * n_labels + neighbour_labels.ravel()
    counts = np.bincount(flat, minlength=n * n_labels).reshape(n, n_labels)
    return counts.argmax(axis=1)


def spatial_label_transfer_accuracy(points: np.ndarray, type_codes: np.ndarray, k: int) -> float:
    """Fraction of cells whose type equals the majority type of their k nearest other cells in ``points``."""
    n_types = int(type_codes.max()) + 1
    neighbours = knn_indices(points, min(k, len(points) - 1))
    return float((majority_vote(type_codes[neighbours], n_types) == type_codes).mean())
