"""Schedule, losses (exact and sampled distance loss, masked expression MSE) and the sampler."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from alphastomics.diffusion.losses import distance_loss, exact_distance_loss, expression_mse, sampled_distance_loss
from alphastomics.diffusion.schedule import NoiseSchedule, cosine_alpha_bar
from alphastomics.diffusion.sampler import timestep_grid


def test_cosine_schedule_is_monotone_and_ends_near_zero():
    ab = cosine_alpha_bar(200)
    assert ab[0] == pytest.approx(1.0)
    assert torch.all(ab[1:] < ab[:-1])
    assert ab[-1] < 1e-3
    s = NoiseSchedule(200, nu_expression=1.0, nu_position=2.0)
    assert torch.allclose(s.alpha_bar("position"), s.alpha_bar("expression") ** 2)


def test_exact_distance_loss_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 3)), rng.normal(size=(60, 3))
    expected = np.mean((pdist(a) - pdist(b)) ** 2)
    assert float(exact_distance_loss(torch.tensor(a), torch.tensor(b))) == pytest.approx(expected, rel=1e-5)


def test_distance_loss_is_rigid_invariant():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(80, 3)), rng.normal(size=(80, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    moved = a @ q.T + 5.0
    assert float(exact_distance_loss(torch.tensor(moved), torch.tensor(b))) == pytest.approx(
        float(exact_distance_loss(torch.tensor(a), torch.tensor(b))), rel=1e-6
    )


def _tissue(n, seed):
    """A real-looking layout: clustered 3D points, and a prediction that is locally distorted."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, 3)) * 3
    true = centres[rng.integers(12, size=n)] + rng.normal(size=(n, 3)) * 0.5
    pred = true * np.array([1.1, 0.9, 1.0]) + rng.normal(size=(n, 3)) * 0.3
    return torch.tensor(pred, dtype=torch.float32, requires_grad=True), torch.tensor(true, dtype=torch.float32)


def test_sampled_distance_loss_matches_exact_at_2000_cells():
    pred, true = _tissue(2000, seed=2)
    exact = exact_distance_loss(pred, true)
    (exact_grad,) = torch.autograd.grad(exact, pred)
    g = torch.Generator().manual_seed(0)
    estimate = sampled_distance_loss(pred, true, k=16, pairs_per_cell=64, generator=g)
    (estimate_grad,) = torch.autograd.grad(estimate, pred)
    assert abs(float(estimate) / float(exact) - 1) < 0.05
    cosine = torch.nn.functional.cosine_similarity(exact_grad.flatten(), estimate_grad.flatten(), dim=0)
    assert cosine > 0.9


def test_sampled_distance_loss_is_unbiased():
    pred, true = _tissue(300, seed=3)
    exact = float(exact_distance_loss(pred, true))
    g = torch.Generator().manual_seed(1)
    estimates = [float(sampled_distance_loss(pred, true, k=8, pairs_per_cell=4, generator=g)) for _ in range(200)]
    # Mean of many small-sample estimates converges on the exact value (standard error ~0.5%).
    assert np.mean(estimates) == pytest.approx(exact, rel=0.02)


def test_distance_loss_switches_to_estimate_above_threshold():
    pred, true = _tissue(500, seed=4)
    mask = torch.ones(1, 500, dtype=torch.bool)
    exact = distance_loss(pred[None], true[None], mask, exact_max_cells=1000)
    sampled = distance_loss(pred[None], true[None], mask, exact_max_cells=100, generator=torch.Generator().manual_seed(0))
    assert float(exact) == pytest.approx(float(exact_distance_loss(pred, true)))
    assert float(sampled) != float(exact)
    assert float(sampled) == pytest.approx(float(exact), rel=0.1)


def test_expression_mse_ignores_unmeasured_genes_and_padding():
    pred = torch.zeros(1, 4, 3)
    target = torch.ones(1, 4, 3)
    target[0, :, 2] = 100.0  # unmeasured gene: huge error that must not count
    target[0, 3] = 50.0  # padded cell
    node_mask = torch.tensor([[True, True, True, False]])
    gene_mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert float(expression_mse(pred, target, node_mask, gene_mask)) == pytest.approx(1.0)


def test_timestep_grid():
    assert timestep_grid(10, None) == list(range(10, 0, -1)) + [0]
    grid = timestep_grid(200, 20)
    assert grid[0] == 200 and grid[-2] == 1 and grid[-1] == 0 and len(grid) == 21
    assert all(a > b for a, b in zip(grid, grid[1:]))
