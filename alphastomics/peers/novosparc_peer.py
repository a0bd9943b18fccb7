"""novoSpaRc de novo reconstruction (expr_to_pos), through the ``novosparc`` package (POT inside).

As its documentation describes for de novo reconstruction: a target space of locations (here a
regular grid over the held-out slice's bounding box: its size in cells and its shape, 2D or 3D),
smooth costs (kNN-graph shortest paths in expression, a PCA of it, and between target locations),
then entropic Gromov-Wasserstein transport of cells onto locations with no reference atlas
(``alpha_linear = 0``). Each cell is placed at the transport-weighted mean of the locations.
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from alphastomics.peers.baselines import pca_embedding
from alphastomics.peers.common import PeerInputs


def target_grid(coords: np.ndarray, n_locations: int) -> np.ndarray:
    """A regular grid of about ``n_locations`` points filling the bounding box of ``coords``."""
    low, high = coords.min(0), coords.max(0)
    extent = np.maximum(high - low, 1e-9)
    d = coords.shape[1]
    spacing = (np.prod(extent) / max(n_locations, 1)) ** (1 / d)
    counts = [max(1, int(round(e / spacing))) for e in extent]
    axes = [np.linspace(lo, hi, c) if c > 1 else np.array([(lo + hi) / 2]) for lo, hi, c in zip(low, high, counts)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)


def novosparc_positions(inputs: PeerInputs, n_components: int = 30, num_neighbors: int = 5, epsilon: float = 5e-3,
                        max_iter: int = 100, seed: int = 0) -> np.ndarray:
    import anndata as ad
    import novosparc

    d = inputs.n_dims
    expression = inputs.test.expression[:, inputs.test.gene_mask.astype(bool)].astype(np.float64)
    locations = target_grid(inputs.test.coords[:, :d].astype(np.float64), len(expression))
    dataset = ad.AnnData(X=expression)
    tissue = novosparc.cm.Tissue(dataset=dataset, locations=locations)
    representation = pca_embedding(expression, n_components, seed).astype(np.float64)
    with contextlib.redirect_stdout(io.StringIO()):
        tissue.setup_smooth_costs(dge_rep=representation, num_neighbors_s=num_neighbors, num_neighbors_t=num_neighbors,
                                  verbose=False)
    p_locations, p_expression = novosparc.rc.create_space_distributions(tissue.num_locations, tissue.num_cells)
    # Tissue.reconstruct runs up to 1,000 outer iterations; the same solver with a bound on them
    # (and a larger epsilon when it meets numerical errors, as Tissue.reconstruct does).
    for eps in (epsilon, epsilon * 10, epsilon * 100):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            transport = novosparc.rc._GWadjusted.gromov_wasserstein_adjusted_norm(
                tissue.costs["markers"], tissue.costs["expression"], tissue.costs["locations"], 0, p_expression,
                p_locations, "square_loss", epsilon=eps, max_iter=max_iter, verbose=True)
        if "numerical errors" not in out.getvalue() and np.isfinite(transport).all() and transport.sum() > 0:
            break
    weights = transport / np.maximum(transport.sum(1, keepdims=True), 1e-300)
    return weights @ locations
