"""One layout of a slice from the model's ``expr_to_pos`` draws: the consensus layout.

Each draw is a sample of where the cells may lie. It has the tissue's size and shape, but every
cell carries its own share of the posterior's spread, which scrambles local neighbourhoods. The
mean of each cell's position over the posterior removes that noise but pulls the cells the model
is unsure of towards the middle, so the tissue shrinks along the axes the model is unsure of
(docs/findings/sampling.md, "The consensus layout").

The consensus layout keeps the mean's order and the draws' size: the mean is moved by the linear
map that gives it the draws' covariance with the least displacement of its cells (the optimal-
transport map between two Gaussians). This is the constrained Bayes estimator (Louis 1984; Ghosh
1992): posterior means whose spread matches the spread the posterior expects of the ensemble,
here measured by the draws themselves.

The mean comes from where the frame allows it: in a shared frame the posterior mean of each
position (``draws.expected_positions``); in a per-slice frame, where each draw has its own
orientation, the generalised Procrustes mean of the draws (rotations, reflections and
translations, no scaling).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import orthogonal_procrustes

CONSENSUS_PREFIX = "consensus_"  # its metrics: the draw's metrics under this prefix


def procrustes_mean(draws: np.ndarray, iterations: int = 50, tolerance: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Generalised Procrustes analysis without scaling of (S, N, d) draws.

    Returns (the mean layout, the draws aligned to it): each draw centred and rotated or reflected
    onto the running mean until the mean stops moving. The mean sits at the draws' mean centroid."""
    centroid = draws.mean(axis=(0, 1))
    centred = draws - draws.mean(axis=1, keepdims=True)
    mean = centred[0]
    aligned = centred
    for _ in range(iterations):
        aligned = np.stack([draw @ orthogonal_procrustes(draw, mean)[0] for draw in centred])
        updated = aligned.mean(0)
        moved = np.sqrt(((updated - mean) ** 2).sum() / max((updated ** 2).sum(), 1e-300))
        mean = updated
        if moved < tolerance:
            break
    return mean + centroid, aligned + centroid


def _symmetric_power(matrix: np.ndarray, power: float, floor: float) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.maximum(values, floor) ** power) @ vectors.T


def matched_spread(mean: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(N, d) ``mean`` moved about its centroid so that its covariance is the draws' mean covariance.

    The map is A = C^-1/2 (C^1/2 D C^1/2)^1/2 C^-1/2 (C the mean's covariance, D the draws'):
    the symmetric linear map taking N(0, C) to N(0, D) that moves points least. An axis along which
    the mean has no spread at all stays as it is (nothing to stretch)."""
    centre = mean.mean(0)
    centred = mean - centre
    target = np.mean([np.cov(draw - draw.mean(0), rowvar=False) for draw in draws], axis=0)
    current = np.cov(centred, rowvar=False)
    floor = 1e-12 * max(float(np.trace(current)), 1e-300)
    root = _symmetric_power(current, 0.5, floor)
    inverse_root = _symmetric_power(current, -0.5, floor)
    transform = inverse_root @ _symmetric_power(root @ target @ root, 0.5, 0.0) @ inverse_root
    return centred @ transform + centre


def consensus_layout(draws: np.ndarray, posterior_mean: np.ndarray | None = None) -> np.ndarray:
    """(N, d) consensus layout of (S, N, d) draws in source units.

    ``posterior_mean``: each cell's posterior mean position in a shared frame, where the draws are
    in that frame too; None in a per-slice frame (the Procrustes mean of the draws is used)."""
    if posterior_mean is None:
        mean, aligned = procrustes_mean(draws)
        return matched_spread(mean, aligned)
    return matched_spread(posterior_mean, draws)


def spaced_apart(points: np.ndarray, spacing: float, iterations: int = 50, neighbours: int = 8, step: float = 0.5) -> np.ndarray:
    """(N, d) ``points`` with no two closer than about ``spacing``, the arrangement otherwise kept.

    An estimate per cell (a mean over the posterior, smoothed over neighbours in expression) piles
    cells that the model cannot tell apart onto one another: the layout ranks distances and keeps
    neighbourhoods, but reads as clumps and holes, not as tissue, whose cells lie about a cell's
    width apart. Overlap removal, as force-directed layouts do it: each round, every pair among a
    cell's ``neighbours`` nearest that is closer than ``spacing`` is pushed apart along the line
    joining them by ``step`` of its overlap, half to each side; cells already apart do not move.
    Neighbour order survives (cells move by at most about a spacing), local density evens out."""
    from scipy.spatial import cKDTree

    spaced = np.asarray(points, dtype=np.float64).copy()
    k = min(neighbours, len(spaced) - 1)
    if k < 1 or not spacing > 0:
        return spaced
    for _ in range(iterations):
        distance, index = cKDTree(spaced).query(spaced, k=k + 1)
        distance, index = distance[:, 1:], index[:, 1:]
        overlap = np.clip(spacing - distance, 0.0, None)
        if not overlap.any():
            break
        away = (spaced[:, None, :] - spaced[index]) / np.maximum(distance, 1e-12)[..., None]
        spaced += step / 2 * (away * overlap[..., None]).sum(axis=1)
    return spaced


def typical_spacing(draws: np.ndarray) -> float:
    """Median over (S, N, d) draws of each draw's median distance from a cell to its nearest other cell."""
    from scipy.spatial import cKDTree

    medians = [np.median(cKDTree(draw).query(draw, k=2)[0][:, 1]) for draw in draws if len(draw) > 1]
    return float(np.median(medians)) if medians else 0.0
