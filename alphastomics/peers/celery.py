"""CeLEry (expr_to_pos) through the authors' package ``CeLEryPy`` (imported as ``CeLEry``), run as
its tutorial runs it: expression z-scored per gene (``get_zscore``, the reference and the query each
by its own mean and spread), ``Fit_cord`` on the training cells (hidden layers 30, 25, 15; at most
500 epochs, the package's batch size, learning rate and learning-rate halving), ``Predict_cord``
on the held-out cells.

CeLEry regresses two coordinates in [0, 1] (the training cells' bounding box). Two things this
project adds, because CeLEry's examples have one 2D reference section:
- In ``per_slice`` frames (sections of different animals) the training slices are first brought
  into one frame: each is centred and scaled to unit RMS radius, and every slice after the first
  is rotated (reflections allowed) onto the first: each of its cells is paired with the mean
  position of its nearest cells in expression in the first slice, and the orthogonal Procrustes
  rotation of those pairs is applied (repeated a few times). Predictions are brought back to
  source units with the training slices' cell density.
- In 3D, one CeLEry model per pair of axes, (0, 1) and (1, 2); axis 1, predicted twice, is averaged.
"""

from __future__ import annotations

import contextlib
import io
import tempfile

import numpy as np
from scipy.linalg import orthogonal_procrustes
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from alphastomics.peers.common import PeerInputs, standardise


def _unit(coords: np.ndarray) -> tuple[np.ndarray, float]:
    centred = coords - coords.mean(0)
    radius = float(np.sqrt((centred ** 2).sum(1).mean())) or 1.0
    return centred / radius, radius


def align_slices(expressions: list[np.ndarray], coords: list[np.ndarray], k: int = 10, iterations: int = 3,
                 n_components: int = 20, seed: int = 0) -> list[np.ndarray]:
    """Unit-scaled coordinates of every slice in the frame of the first (see the module docstring)."""
    pooled = np.concatenate(expressions).astype(np.float64)
    standardised = standardise(pooled, *[e.astype(np.float64) for e in expressions])[1:]
    n = max(1, min(n_components, pooled.shape[1], pooled.shape[0] - 1))
    pca = PCA(n_components=n, random_state=seed).fit(np.concatenate(standardised))
    space = [pca.transform(e) for e in standardised]
    aligned = [_unit(c)[0] for c in coords]
    reference = aligned[0]
    finder = NearestNeighbors(n_neighbors=min(k, len(reference))).fit(space[0])
    for i in range(1, len(aligned)):
        _, index = finder.kneighbors(space[i])
        target = reference[index].mean(1)
        current = aligned[i]
        for _ in range(iterations):
            rotation, _ = orthogonal_procrustes(current, target)
            current = current @ rotation
        aligned[i] = current
    return aligned


def _fit_and_predict(train_expression: np.ndarray, train_xy: np.ndarray, test_expression: np.ndarray, workdir: str,
                     name: str, hidden_dims: list[int], num_epochs_max: int, batch_size: int, seed: int) -> np.ndarray:
    """One ``Fit_cord`` / ``Predict_cord`` round trip -> (N, 2) coordinates in the training units."""
    import anndata as ad
    import pandas as pd
    import CeLEry

    reference = ad.AnnData(X=train_expression.astype(np.float32),
                           obs=pd.DataFrame({"x": train_xy[:, 0], "y": train_xy[:, 1]}))
    query = ad.AnnData(X=test_expression.astype(np.float32))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        CeLEry.get_zscore(reference)
        CeLEry.get_zscore(query)
        CeLEry.Fit_cord(data_train=reference, location_data=reference.obs[["x", "y"]], hidden_dims=list(hidden_dims),
                        num_epochs_max=num_epochs_max, path=workdir, filename=name, seednum=seed,
                        batch_size=batch_size, num_workers=0)
        unit = np.asarray(CeLEry.Predict_cord(data_test=query, path=workdir, filename=name), np.float64)
    # Fit_cord scales each axis to [0, 1] over the training cells' range widened by 1 on both sides
    low, high = train_xy.min(0) - 1, train_xy.max(0) + 1
    return unit * (high - low) + low


def celery_positions(inputs: PeerInputs, hidden_dims: tuple[int, ...] = (30, 25, 15), num_epochs_max: int = 500,
                     batch_size: int = 4, seed: int = 2021) -> tuple[np.ndarray, dict]:
    """(N, d) coordinates of the held-out slice's cells predicted from their expression, and the run's settings."""
    from importlib.metadata import version

    d = inputs.n_dims
    genes = inputs.shared.copy()
    expressions = [s.expression[:, genes].astype(np.float64) for s in inputs.train]
    pooled = np.concatenate(expressions)
    test = inputs.test.expression[:, genes].astype(np.float64)
    # get_zscore divides by each gene's spread: a gene constant in either set would give NaN
    varying = (pooled.std(0) > 1e-8) & (test.std(0) > 1e-8)
    if not varying.any():
        raise ValueError("celery: no gene varies in both the training slices and the held-out slice")
    coords = [s.coords[:, :d].astype(np.float64) for s in inputs.train]
    if inputs.frame == "shared":
        targets = np.concatenate(coords)
    else:
        # unit RMS radius, then x100 so that Fit_cord's widening of the range by 1 stays small
        targets = np.concatenate(align_slices(expressions, coords, seed=seed)) * 100.0
    pairs = [(0, 1)] if d == 2 else [(0, 1), (1, 2)]
    predicted = np.zeros((len(test), d))
    counts = np.zeros(d)
    with tempfile.TemporaryDirectory(prefix="celery-") as workdir:
        for a, b in pairs:
            xy = _fit_and_predict(pooled[:, varying], targets[:, [a, b]], test[:, varying], workdir, f"axes{a}{b}",
                                  list(hidden_dims), num_epochs_max, batch_size, seed)
            predicted[:, [a, b]] += xy
            counts[[a, b]] += 1
    predicted /= counts
    run = {"package": "CeLEryPy", "package_version": version("CeLEryPy"),
           "settings": {"function": "Fit_cord / Predict_cord", "hidden_dims": list(hidden_dims),
                        "num_epochs_max": num_epochs_max, "batch_size": batch_size, "seednum": seed, "genes": int(varying.sum()),
                        "axis_pairs": [list(p) for p in pairs],
                        "training_frame": "shared" if inputs.frame == "shared" else "slices aligned by expression (Procrustes)"}}
    if inputs.frame == "shared":
        return predicted, run
    # unit RMS radius -> source units at the training slices' density (radius grows as sqrt(N) in 2D, cbrt(N) in 3D)
    radii = [_unit(c)[1] / len(c) ** (1 / d) for c in coords]
    return predicted / 100.0 * float(np.mean(radii)) * len(test) ** (1 / d), run
