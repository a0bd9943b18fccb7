"""The consensus layout of expr_to_pos draws (alphastomics.layout), against independent computations."""

import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.spatial.transform import Rotation

from alphastomics.layout import consensus_layout, matched_spread, procrustes_mean, spaced_apart, typical_spacing
from alphastomics.metrics.geometry import extent_ratios, local_density_spread, nearest_neighbour_distances
from alphastomics.metrics.neighbourhoods import knn_preservation


def test_procrustes_mean_undoes_rotations_reflections_and_translations():
    rng = np.random.default_rng(0)
    shape = rng.normal(size=(200, 3)) * [5.0, 2.0, 1.0]
    moved = []
    for i in range(4):
        rotation = Rotation.random(random_state=i).as_matrix()
        if i % 2:
            rotation = rotation @ np.diag([1.0, 1.0, -1.0])  # a mirror image is the same tissue
        moved.append(shape @ rotation + rng.normal(size=3) * 10)
    mean, aligned = procrustes_mean(np.stack(moved))
    for draw in aligned:
        np.testing.assert_allclose(draw - draw.mean(0), mean - mean.mean(0), atol=1e-8)
    # the mean is the shape up to one rigid motion: its pairwise distances are the shape's
    np.testing.assert_allclose(np.linalg.norm(mean[:, None] - mean[None], axis=-1),
                               np.linalg.norm(shape[:, None] - shape[None], axis=-1), atol=1e-8)
    np.testing.assert_allclose(mean.mean(0), np.mean([m.mean(0) for m in moved], axis=0), atol=1e-8)


def test_matched_spread_gives_the_draws_covariance_by_the_gaussian_transport_map():
    rng = np.random.default_rng(1)
    mean = rng.normal(size=(500, 2)) @ np.array([[3.0, 1.0], [0.0, 0.5]]) + [100.0, -4.0]
    draws = np.stack([rng.normal(size=(500, 2)) @ np.array([[2.0, 0.0], [1.5, 3.0]]) for _ in range(3)])
    spread = matched_spread(mean, draws)
    target = np.mean([np.cov(d, rowvar=False) for d in draws], axis=0)
    np.testing.assert_allclose(np.cov(spread, rowvar=False), target, rtol=1e-8)
    np.testing.assert_allclose(spread.mean(0), mean.mean(0), atol=1e-8)
    # the map, computed independently with scipy's matrix square root
    c = np.cov(mean, rowvar=False)
    root = np.real(sqrtm(c))
    inverse = np.linalg.inv(root)
    transform = inverse @ np.real(sqrtm(root @ target @ root)) @ inverse
    np.testing.assert_allclose(spread, (mean - mean.mean(0)) @ transform + mean.mean(0), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(transform, transform.T, atol=1e-8)  # no rotation: cells move least
    # a mean that already has the draws' spread is left where it is
    np.testing.assert_allclose(matched_spread(draws[0], draws[:1]), draws[0], atol=1e-8)


def test_a_mean_collapsed_to_a_line_is_not_blown_up():
    """Nothing can be stretched along an axis the mean has no spread on: no division by zero."""
    rng = np.random.default_rng(2)
    mean = np.column_stack([rng.normal(size=100), np.zeros(100)])
    draws = rng.normal(size=(2, 100, 2))
    spread = matched_spread(mean, draws)
    assert np.isfinite(spread).all()
    assert (spread.std(0) <= 1.01 * draws.std(axis=(0, 1))).all()


def test_the_consensus_keeps_neighbourhoods_better_than_a_draw_and_the_size_of_the_draws():
    """A posterior whose draws scatter each cell around its place, more along one axis: the
    Procrustes mean of the draws shrinks that axis; the consensus keeps the draws' extent and
    preserves neighbourhoods better than any one draw."""
    rng = np.random.default_rng(3)
    truth = rng.uniform(0, 1, size=(600, 2)) * [10.0, 4.0]
    rotations = [Rotation.from_euler("z", a, degrees=True).as_matrix()[:2, :2] for a in (0, 70, 160, 250)]
    draws = np.stack([(truth + rng.normal(size=truth.shape) * [0.6, 1.5]) @ r for r in rotations])
    consensus = consensus_layout(draws)
    mean, _ = procrustes_mean(draws)
    draw_extents = extent_ratios(truth, draws[0])
    assert extent_ratios(truth, mean)[1] < 0.9 * draw_extents[1]
    np.testing.assert_allclose(extent_ratios(truth, consensus), draw_extents, rtol=0.1)
    assert (knn_preservation(truth, consensus, [10])[0]["knn_preservation_k10"]
            > 1.5 * knn_preservation(truth, draws[0], [10])[0]["knn_preservation_k10"])


def test_in_a_shared_frame_the_consensus_starts_from_the_posterior_mean_and_stays_in_the_frame():
    rng = np.random.default_rng(4)
    truth = rng.uniform(0, 50, size=(300, 3)) + [200.0, 0.0, -30.0]
    posterior_mean = truth + rng.normal(size=truth.shape)
    draws = np.stack([truth + rng.normal(size=truth.shape) * 5 for _ in range(3)])
    consensus = consensus_layout(draws, posterior_mean)
    np.testing.assert_allclose(consensus, matched_spread(posterior_mean, draws))
    np.testing.assert_allclose(consensus.mean(0), posterior_mean.mean(0), atol=1e-8)
    assert np.median(np.linalg.norm(consensus - truth, axis=1)) < np.median(np.linalg.norm(draws[0] - truth, axis=1))


@pytest.mark.parametrize("n_draws", [1, 2])
def test_one_or_two_draws_are_enough(n_draws):
    rng = np.random.default_rng(5)
    draws = rng.normal(size=(n_draws, 50, 2))
    consensus = consensus_layout(draws)
    assert consensus.shape == (50, 2) and np.isfinite(consensus).all()
    if n_draws == 1:
        np.testing.assert_allclose(consensus, draws[0], atol=1e-8)


def test_spacing_evens_out_clumps_and_keeps_the_arrangement():
    """A lattice of cells one unit apart, a third of them piled in tight clumps (as a consensus layout
    gathers cells it cannot tell apart): spaced at the lattice's own spacing, the clumps open up
    (local density as even as uniform points' or real sections', which score about 0.18; no two
    cells closer than half a unit), most
    of each cell's neighbours stay its neighbours, and a layout already spaced does not move."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(30.0), np.arange(30.0)), -1).reshape(-1, 2)
    assert typical_spacing(grid[None]) == pytest.approx(1.0)
    clumped = grid.copy()
    centres = grid[rng.choice(len(grid), 30, replace=False)]
    piled = rng.choice(len(grid), 300, replace=False)
    clumped[piled] = centres[rng.integers(0, 30, 300)] + rng.normal(scale=0.05, size=(300, 2))
    spaced = spaced_apart(clumped, spacing=1.0)
    assert nearest_neighbour_distances(clumped).min() < 0.05
    assert nearest_neighbour_distances(spaced).min() > 0.5
    assert local_density_spread(spaced) < 0.18
    assert local_density_spread(clumped) > 2 * local_density_spread(spaced)
    kept = knn_preservation(clumped[~np.isin(np.arange(900), piled)], spaced[~np.isin(np.arange(900), piled)], [10])[0]
    assert kept["knn_preservation_k10"] > 0.6  # cells that were not piled keep most of their neighbours
    np.testing.assert_array_equal(spaced_apart(grid * 1.5, spacing=1.0), grid * 1.5)
