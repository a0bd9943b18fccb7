"""Cluster metrics: leiden clusters of a representation vs cell types, and expression label transfer.

Clustering follows scanpy's standard recipe: scale -> PCA -> kNN graph -> leiden (igraph flavour,
fixed seed). Two choices differ from scanpy's defaults, for speed only: the kNN search is
sklearn's exact brute force (``KNeighborsTransformer``) and graph weights are the Gaussian kernel
(``method='gauss'``), because the default UMAP weights compile numba kernels in every new
process, which takes longer than the clustering itself.
"""

from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix
from sklearn.neighbors import KNeighborsTransformer, NearestNeighbors

from alphastomics.metrics.neighbourhoods import majority_vote

N_NEIGHBORS = 15  # scanpy's default for sc.pp.neighbors
MAX_PCS = 50  # scanpy's default number of principal components
SCALE_CLIP = 10.0  # sc.pp.scale(max_value=10), the usual recipe


def leiden_clusters(matrix: np.ndarray, resolution: float, seed: int, use_pca: bool = True) -> tuple[np.ndarray, dict]:
    """Leiden cluster label of each row of ``matrix`` (cells x features) and how it was computed."""
    import scanpy as sc  # heavy import, only when clustering runs

    n_cells, n_features = matrix.shape
    adata = ad.AnnData(np.asarray(matrix, dtype=np.float32))
    how: dict = {"n_cells": n_cells, "n_neighbors": min(N_NEIGHBORS, n_cells - 1), "resolution": resolution, "seed": seed}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scanpy's FutureWarnings about defaults say nothing about this data
        if use_pca:
            sc.pp.scale(adata, max_value=SCALE_CLIP)
            n_pcs = min(MAX_PCS, n_features - 1, n_cells - 1)
            sc.pp.pca(adata, n_comps=n_pcs, random_state=seed)
            representation = "X_pca"
            how.update(scaling=f"per feature to unit variance, clipped at {SCALE_CLIP}", n_pcs=n_pcs)
        else:
            adata.obsm["X_rep"] = adata.X
            representation = "X_rep"
        transformer = KNeighborsTransformer(n_neighbors=how["n_neighbors"], algorithm="brute")
        sc.pp.neighbors(adata, use_rep=representation, method="gauss", transformer=transformer, random_state=seed)
        sc.tl.leiden(adata, resolution=resolution, flavor="igraph", n_iterations=2, directed=False, random_state=seed)
    labels = adata.obs["leiden"].to_numpy()
    how.update(
        pipeline="scanpy: scale -> pca -> neighbors (sklearn brute force, gauss weights) -> leiden (igraph, n_iterations=2)"
        if use_pca else "scanpy: neighbors on the given representation (sklearn brute force, gauss weights) -> leiden (igraph, n_iterations=2)",
        n_clusters=int(len(np.unique(labels))),
    )
    return labels, how


def hungarian_accuracy(cell_types: np.ndarray, clusters: np.ndarray) -> float:
    """Accuracy after the one-to-one matching of clusters to cell types that maximises matches.

    Cells in clusters (or of types) left unmatched when the counts differ count as errors.
    """
    table = contingency_matrix(cell_types, clusters)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / len(cell_types))


def cluster_agreement(cell_types: np.ndarray, clusters: np.ndarray, prefix: str) -> dict[str, float]:
    """ARI, NMI and Hungarian accuracy of ``clusters`` against ``cell_types``."""
    return {
        f"{prefix}_ari": float(adjusted_rand_score(cell_types, clusters)),
        f"{prefix}_nmi": float(normalized_mutual_info_score(cell_types, clusters)),
        f"{prefix}_accuracy": hungarian_accuracy(cell_types, clusters),
    }


def expression_label_transfer_accuracy(
    true_expression: np.ndarray, generated_expression: np.ndarray, cell_types: np.ndarray, k: int, seed: int,
    query_cells: np.ndarray | None = None,
) -> tuple[float, dict]:
    """Accuracy of a kNN vote among true profiles, applied to generated expression.

    Each generated profile's type is the majority type of its k nearest true profiles (PCA of
    true expression, Euclidean distance) *of other cells*: the cell's own true profile is left out,
    as spatial label transfer leaves the cell out of its own neighbours. Otherwise a good
    generated profile finds itself first and votes with its own label. ``cell_types`` are integer
    codes; ``query_cells`` restricts the cells that are predicted (a sample on big slices).
    Ties go to the smallest code, as in sklearn's KNeighborsClassifier.
    """
    n_cells, n_genes = true_expression.shape
    n_pcs = min(MAX_PCS, n_genes, n_cells)
    pca = PCA(n_components=n_pcs, random_state=seed).fit(np.asarray(true_expression, dtype=np.float64))
    k = min(k, n_cells - 1)
    query = np.arange(n_cells) if query_cells is None else np.asarray(query_cells)
    reference = pca.transform(np.asarray(true_expression, dtype=np.float64))
    searched = pca.transform(np.asarray(generated_expression[query], dtype=np.float64))
    # k + 1 neighbours, then drop the cell itself (or, when it is not among them, the farthest)
    neighbours = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(reference).kneighbors(searched, return_distance=False)
    keep = neighbours != query[:, None]
    keep[keep.all(axis=1), -1] = False
    neighbours = neighbours[keep].reshape(len(query), k)
    predicted = majority_vote(cell_types[neighbours], int(cell_types.max()) + 1)
    how = {
        "classifier": "majority type of the k nearest true profiles of other cells (the cell itself excluded), "
                      "euclidean distance in the PCA of true expression",
        "predicts": "cell type of each generated expression profile; compared with the cell's true type",
        "k": k,
        "n_pcs": n_pcs,
        "n_reference_cells": n_cells,
        "n_query_cells": int(len(query)),
        "seed": seed,
    }
    return float(np.mean(predicted == cell_types[query])), how
