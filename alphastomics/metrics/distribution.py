"""Distribution metrics: how close a set of generated cells is to a set of real cells, with no
cell-to-cell correspondence (what ``joint`` generation must be scored with).

- energy distance (Székely & Rizzo) between expression profiles in a PCA space fitted on training
  cells; it is blind to gene-gene structure (cells with every gene shuffled independently across
  cells, same marginals, no cell types, score closer to the test slice than a real slice of another
  animal does), so beside it:
- a kNN classifier two-sample test (Lopez-Paz & Oquab 2017): leave-one-out kNN on the pooled cells,
  balanced accuracy of telling the two sets apart; 0.5 = indistinguishable, 1 = separable (it
  tells the shuffled cells above from real ones more easily than a real slice of another animal);
- cell-type composition L1 of generated cells typed by a kNN classifier trained on training cells;
- the fraction of (near-)zero values and the per-gene spread of generated vs true expression.

Each comes with the same figure for real slices (training slices vs the test slice), so a number
can be read against the spread between real tissues.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier

# "Zero" for the zero-fraction metric: log1p-normalised values below this are zeros in all but name.
NEAR_ZERO = 0.1


def fit_pca(reference: np.ndarray, n_components: int, seed: int) -> PCA:
    n_components = min(n_components, reference.shape[1], reference.shape[0])
    return PCA(n_components=n_components, random_state=seed).fit(np.asarray(reference, np.float64))


def energy_distance(a: np.ndarray, b: np.ndarray, max_points: int, seed: int) -> float:
    """Energy distance 2 E|A-B| - E|A-A'| - E|B-B'| (Euclidean), on at most ``max_points`` random
    points of each set; 0 when the two distributions coincide."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(seed)
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if len(a) > max_points:
        a = a[rng.choice(len(a), max_points, replace=False)]
    if len(b) > max_points:
        b = b[rng.choice(len(b), max_points, replace=False)]
    ab = cdist(a, b).mean()
    aa = cdist(a, a).sum() / max(len(a) * (len(a) - 1), 1)
    bb = cdist(b, b).sum() / max(len(b) * (len(b) - 1), 1)
    return float(2 * ab - aa - bb)


def knn_two_sample_accuracy(a: np.ndarray, b: np.ndarray, k: int, max_points: int, seed: int) -> float:
    """Balanced leave-one-out accuracy of a k-nearest-neighbour vote telling set ``a`` from set ``b``."""
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(seed)
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if len(a) > max_points:
        a = a[rng.choice(len(a), max_points, replace=False)]
    if len(b) > max_points:
        b = b[rng.choice(len(b), max_points, replace=False)]
    pooled = np.concatenate([a, b])
    label = np.r_[np.zeros(len(a)), np.ones(len(b))]
    k = min(k, len(pooled) - 1)
    neighbours = NearestNeighbors(n_neighbors=k).fit(pooled).kneighbors(return_distance=False)  # self excluded
    vote_b = label[neighbours].mean(1) > 0.5
    return float(0.5 * ((~vote_b[label == 0]).mean() + vote_b[label == 1].mean()))


def cell_type_classifier(expression: np.ndarray, labels: np.ndarray, pca: PCA, k: int) -> KNeighborsClassifier:
    return KNeighborsClassifier(n_neighbors=min(k, len(labels))).fit(pca.transform(np.asarray(expression, np.float64)), labels)


def composition(labels: np.ndarray, types: list[str]) -> np.ndarray:
    labels = np.asarray(labels).astype(str)
    counts = np.array([(labels == t).sum() for t in types], dtype=np.float64)
    return counts / max(counts.sum(), 1.0)


def composition_l1(a: np.ndarray, b: np.ndarray, types: list[str]) -> float:
    """L1 distance between the cell-type compositions of two label sets (0 to 2)."""
    return float(np.abs(composition(a, types) - composition(b, types)).sum())


def confusion_rows(labels: np.ndarray, typed: np.ndarray, types: list[str]) -> np.ndarray:
    """(T, T) share of the cells of each true type (row) typed as each type (column); a type with
    no cell gets the identity row (typed as itself: nothing says otherwise)."""
    from sklearn.metrics import confusion_matrix

    labels, typed = np.asarray(labels).astype(str), np.asarray(typed).astype(str)
    rows = confusion_matrix(labels, typed, labels=types, normalize="true")
    absent = ~np.isin(types, labels)
    rows[absent] = np.eye(len(types))[absent]
    return rows


def zero_fraction(expression: np.ndarray) -> float:
    return float(np.mean(np.asarray(expression) < NEAR_ZERO))


def std_ratio_median(true: np.ndarray, generated: np.ndarray) -> float:
    """Median over genes (constant true genes left out) of the generated over the true per-gene std."""
    s_true = np.asarray(true, np.float64).std(0)
    s_generated = np.asarray(generated, np.float64).std(0)
    ok = s_true > 0
    return float(np.median(s_generated[ok] / s_true[ok])) if ok.any() else float("nan")
