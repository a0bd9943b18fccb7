"""Lower bounds and simple peers, small enough to read at a glance.

- ``random_positions`` (expr_to_pos): the coordinates of a randomly permuted copy of the slice:
  the right shape, no information about which cell sits where;
- ``oracle_positions`` (expr_to_pos): an upper reference, not a peer: each cell's coordinates
  regressed from its expression on the *held-out slice's own* other cells (k-fold cross-validation),
  so it sees 80% of the true coordinates no other method is given. It says how much of a cell's
  position its expression tells at all;
- ``pca_embedding`` (domains): principal components of standardised expression;
- ``knn_expression_at_positions`` (pos_to_expr, shared frame): the mean expression of the k
  nearest training cells in the shared frame;
- ``knn_impute`` (impute, SpaGE-like): the held-out genes of each cell as the mean over its k
  nearest training cells in the space of the genes both measure (standardised, PCA).
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.model_selection import KFold, cross_val_predict
from sklearn.neighbors import KNeighborsRegressor, NearestNeighbors

from alphastomics.peers.common import NotApplicable, PeerInputs, standardise


def random_positions(coords: np.ndarray, seed: int = 0) -> np.ndarray:
    return np.asarray(coords)[np.random.default_rng(seed).permutation(len(coords))]


def oracle_positions(inputs: PeerInputs, k: int = 15, folds: int = 5, n_components: int = 30, seed: int = 0) -> np.ndarray:
    """(N, d): each cell's coordinates as the mean of its k nearest cells in expression (standardised,
    PCA) among the held-out slice's cells of the other folds, which bring their true coordinates.

    A k-fold split (shuffled: cells are often stored in spatial order) keeps every cell out of its
    own fit. The defaults sit in the middle of what other choices of k, components and scaling
    give, not at the best of them (docs/findings/peers.md)."""
    measured = inputs.test.gene_mask.astype(bool)
    (x,) = standardise(np.asarray(inputs.test.expression[:, measured], np.float64))
    n = len(x)
    if n < 2 * folds:
        raise NotApplicable(f"the held-out slice has {n} cells: too few for {folds}-fold cross-validation")
    z = PCA(n_components=max(1, min(n_components, n - 1, x.shape[1])), random_state=seed).fit_transform(x)
    neighbours = min(k, n - n // folds - 1)
    split = KFold(folds, shuffle=True, random_state=seed)
    coords = np.asarray(inputs.test.coords[:, : inputs.n_dims], np.float64)
    return cross_val_predict(KNeighborsRegressor(neighbours), z, coords, cv=split).astype(np.float32)


def pca_embedding(expression: np.ndarray, n_components: int = 30, seed: int = 0) -> np.ndarray:
    (x,) = standardise(np.asarray(expression, np.float64))
    n = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
    return PCA(n_components=n, random_state=seed).fit_transform(x).astype(np.float32)


def knn_mean(train_points: np.ndarray, train_values: np.ndarray, query_points: np.ndarray, k: int) -> np.ndarray:
    k = max(1, min(k, len(train_points)))
    _, index = NearestNeighbors(n_neighbors=k).fit(train_points).kneighbors(query_points)
    return np.asarray(train_values)[index].mean(1)


def knn_expression_at_positions(inputs: PeerInputs, k: int = 10) -> np.ndarray:
    """(N, G): each held-out cell's expression as the mean of its k nearest training cells in the shared frame."""
    if inputs.frame != "shared":
        raise NotApplicable("kNN in coordinates needs a shared coordinate frame; this dataset's slices are in per_slice frames")
    d = inputs.n_dims
    train_coords = np.concatenate([s.coords[:, :d] for s in inputs.train])
    train_expr = np.concatenate([s.expression for s in inputs.train])
    return knn_mean(train_coords, train_expr, inputs.test.coords[:, :d], k).astype(np.float32)


def knn_impute(inputs: PeerInputs, k: int = 10, n_components: int = 30, seed: int = 0) -> np.ndarray:
    """(N, G): held-out genes imputed from the k nearest training cells in shared-gene expression space."""
    given = inputs.shared & ~inputs.heldout
    train_x, test_x = standardise(inputs.train_expression(given).astype(np.float64), inputs.test.expression[:, given].astype(np.float64))
    n = max(1, min(n_components, train_x.shape[1], train_x.shape[0] - 1))
    pca = PCA(n_components=n, random_state=seed).fit(train_x)
    train_expr = np.concatenate([s.expression for s in inputs.train])
    return knn_mean(pca.transform(train_x), train_expr, pca.transform(test_x), k).astype(np.float32)
