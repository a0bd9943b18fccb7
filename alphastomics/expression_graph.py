"""What a slice's given expression says about neighbours: cells alike in expression tend to lie near
each other, so their generated values should be alike too.

The model generates each cell's position (``expr_to_pos``) or hidden genes (``impute``) from the
whole slice at once, but the estimates it returns per cell (the consensus layout, the posterior
mean of a hidden gene) carry per-cell noise that scrambles exactly the local structure the given
expression pins down: two cells with the same expression profile get positions as far apart as
the posterior's spread. Smoothing those estimates over the graph of the cells' nearest neighbours
in given expression removes that noise where the expression agrees, and leaves it where it does
not (a cell's neighbours in expression are then spread over the tissue and their mean moves it
little). ``steps`` rounds of ``x <- (1 - weight) x + weight W x`` (W the row-normalised,
symmetrised kNN graph) are a low-pass filter on the graph: the layout that balances staying near
the model's estimate against agreeing with its expression neighbours (Zhou et al. 2004, label
spreading; Laplacian smoothing).

The graph is the one a scanpy user would build (``sc.pp.scale``, ``sc.tl.pca``,
``sc.pp.neighbors``' kNN): genes standardised so that a few highly expressed genes do not decide
it, principal components, Euclidean kNN; for a layout, each cell's neighbours are chosen among the
cells the layout already puts near it (a bilateral filter), so that smoothing refines the local
arrangement without pulling cells of a type together across the tissue. Its settings and the steps per mode were chosen on the
every-slice benchmark's folds (docs/findings/model.md, "Neighbours in expression").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

SMOOTHING_WEIGHT = 0.5  # per step: half the cell's own estimate, half its neighbours' mean


@dataclass(frozen=True)
class ExpressionGraph:
    """Settings of the graph and of the smoothing of one mode (``alphastomics.config.SamplingConfig.expression_graph``)."""

    neighbours: int = 10
    components: int = 30
    steps: int = 0  # rounds of smoothing; 0: none
    pool: int = 150  # expr_to_pos: neighbours chosen among this many nearest cells of the layout (0: anywhere)

    def record(self, mode: str) -> dict:
        """What the sample file's ``uns['alphastomics']['expression_graph']`` says was done."""
        return {"neighbours": self.neighbours, "components": self.components, "steps": self.steps,
                "pool": self.pool if mode == "expr_to_pos" else 0,
                "weight": SMOOTHING_WEIGHT, "features": "given genes, standardised, principal components",
                "smoothed": SMOOTHED[mode]}


# what is smoothed in each mode that has given expression
_CHUNK_CELLS = 1024

SMOOTHED = {"expr_to_pos": "obsm['spatial_pred_consensus']", "impute": "layers['expr_pred_mean'] of the generated genes"}


def neighbour_graph(expression: np.ndarray, neighbours: int, components: int, within: np.ndarray | None = None,
                    pool: int = 0) -> sparse.csr_matrix:
    """(N, N) row-stochastic graph of each cell's ``neighbours`` nearest cells in the principal
    components of its standardised ``expression`` (N, G), symmetrised (a cell links to the cells
    that list it too). Genes with no variance are left out; with one cell or no varying gene
    the graph is the identity (nothing to learn from).

    ``within`` (N, d) positions and ``pool`` > 0: a cell's neighbours are chosen among its ``pool``
    nearest cells in those positions only (an edge-preserving, bilateral graph). Cells of one type
    scattered over the tissue are alike in expression wherever they lie; linked across the tissue,
    smoothing would pull them together and distort its large-scale shape, while linked only
    within a neighbourhood they sort its local arrangement out."""
    expression = np.asarray(expression, dtype=np.float64)
    n = expression.shape[0]
    varying = expression.std(axis=0) > 0
    k = min(neighbours, n - 1)
    if k < 1 or not varying.any():
        return sparse.identity(n, format="csr")
    scaled = StandardScaler().fit_transform(expression[:, varying])
    n_components = min(components, scaled.shape[1], n - 1)
    if n_components < scaled.shape[1]:
        scaled = PCA(n_components=n_components, random_state=0).fit_transform(scaled)
    if within is not None and pool > 0:
        candidates = NearestNeighbors(n_neighbors=max(k, min(pool, n - 1))).fit(within).kneighbors(return_distance=False)
        nearest = np.empty((n, k), dtype=candidates.dtype)
        # in chunks of cells: (cells, pool, components) at once would be gigabytes at 10^5 cells
        for start in range(0, n, _CHUNK_CELLS):
            chunk = candidates[start:start + _CHUNK_CELLS]
            distance = ((scaled[chunk] - scaled[start:start + len(chunk), None, :]) ** 2).sum(axis=-1)
            nearest[start:start + len(chunk)] = np.take_along_axis(chunk, np.argsort(distance, axis=1)[:, :k], axis=1)
    else:
        nearest = NearestNeighbors(n_neighbors=k).fit(scaled).kneighbors(return_distance=False)
    rows = np.repeat(np.arange(n), k)
    graph = sparse.csr_matrix((np.ones(n * k), (rows, nearest.ravel())), shape=(n, n))
    graph = ((graph + graph.T) > 0).astype(np.float64)
    return sparse.diags(1.0 / np.asarray(graph.sum(axis=1)).ravel()) @ graph


def smooth(values: np.ndarray, graph: sparse.csr_matrix, steps: int, weight: float = SMOOTHING_WEIGHT) -> np.ndarray:
    """``values`` (N, ...) after ``steps`` rounds of moving each cell's value ``weight`` of the way to
    the mean of its neighbours' values."""
    smoothed = np.asarray(values, dtype=np.float64)
    for _ in range(steps):
        smoothed = (1.0 - weight) * smoothed + weight * (graph @ smoothed)
    return smoothed
