"""Schedule, losses (exact and sampled distance loss, masked expression MSE) and the sampler."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from alphastomics.diffusion.losses import (
    distance_loss,
    exact_distance_loss,
    expression_mse,
    noise_level_weight,
    position_mse,
    sampled_distance_loss,
    weighted_mean,
)
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
    exact = distance_loss(pred[None], true[None], mask, exact_max_cells=1000)[0]
    sampled = distance_loss(pred[None], true[None], mask, exact_max_cells=100, generator=torch.Generator().manual_seed(0))[0]
    assert float(exact) == pytest.approx(float(exact_distance_loss(pred, true)))
    assert float(sampled) != float(exact)
    assert float(sampled) == pytest.approx(float(exact), rel=0.1)


def test_expression_mse_counts_only_channels_with_a_target_and_real_cells():
    pred = torch.zeros(1, 4, 3)
    target = torch.ones(1, 4, 3)
    target[0, :, 2] = 100.0  # no target (unmeasured gene, or magnitude of a zero): must not count
    target[0, 3] = 50.0  # padded cell
    node_mask = torch.tensor([[True, True, True, False]])
    target_mask = torch.ones(1, 4, 3)
    target_mask[0, :, 2] = 0.0
    assert expression_mse(pred, target, target_mask, node_mask).tolist() == pytest.approx([1.0])


def test_position_mse_uses_the_slice_axes_only():
    pred = torch.zeros(2, 3, 3)
    target = torch.ones(2, 3, 3)
    target[..., 2] = 7.0  # z of a 2D slice: not an axis of the slice
    dim_mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    node_mask = torch.ones(2, 3, dtype=torch.bool)
    assert position_mse(pred, target, node_mask, dim_mask).tolist() == pytest.approx([1.0, (1 + 1 + 49) / 3])


def test_min_snr_weight_caps_clean_steps_and_keeps_noisy_ones():
    alpha_bar = torch.tensor([0.999, 0.5, 0.01])
    w = noise_level_weight(alpha_bar, "min_snr", 5.0)
    assert w.tolist() == pytest.approx([5.0, 2.0, 1 + 0.01 / 0.99])
    assert noise_level_weight(alpha_bar, "uniform", 5.0).tolist() == [1.0, 1.0, 1.0]
    # weighted_mean averages over the examples that generated the modality only
    assert float(weighted_mean(torch.tensor([2.0, 4.0, 100.0]), torch.tensor([1.0, 0.5, 0.0]))) == pytest.approx(2.0)


def test_timestep_grid():
    assert timestep_grid(10, None) == list(range(10, 0, -1)) + [0]
    grid = timestep_grid(200, 20)
    assert grid[0] == 200 and grid[-2] == 1 and grid[-1] == 0 and len(grid) == 21
    assert all(a > b for a, b in zip(grid, grid[1:]))


def _toy_model():
    from alphastomics.config import ModelConfig
    from alphastomics.model.network import AlphaSTomicsNet

    torch.manual_seed(0)
    return AlphaSTomicsNet(ModelConfig(hidden_dim=16, num_layers=1, num_heads=2, local_neighbours=4), [0, 1, 2, 0, 1, 2], 3, 20).eval()


def _toy_batch(B=2, N=12):
    from alphastomics.data.batch import SliceBatch

    g = torch.Generator().manual_seed(5)
    return SliceBatch(torch.randn(B, N, 6, generator=g), torch.ones(B, N, 6), torch.randn(B, N, 3, generator=g) * torch.tensor([1.0, 1.0, 0.0]),
                      torch.ones(B, N, dtype=torch.bool), torch.ones(B, 3), torch.tensor([[1.0, 1.0, 0.0]] * B))


@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_samplers_keep_the_given_modality_and_repeat_with_the_seed(sampler):
    from alphastomics.diffusion.sampler import sample

    model, single = _toy_model(), _toy_batch(B=1)
    batch = single.repeat(2)  # two draws of one slice, as alphastomics sample makes them
    schedule = NoiseSchedule(20)
    run = lambda seeds, **kw: sample(model, schedule, batch, True, False, True, steps=5, sampler=sampler, progress=False,
                                     generator=[torch.Generator().manual_seed(s) for s in seeds], **kw)
    expression, positions = run([0, 1])
    centred = batch.positions - batch.positions.mean(1, keepdim=True)
    assert torch.equal(positions, centred)  # given coordinates untouched (centred frame)
    again, _ = run([0, 1])
    assert torch.equal(expression, again)
    # draw 1 of a batch equals the same seed drawn alone: each draw reproducible by its seed
    alone, _ = sample(model, schedule, single, True, False, True, steps=5, sampler=sampler, progress=False,
                      generator=[torch.Generator().manual_seed(1)])
    assert torch.allclose(expression[1], alone[0], atol=1e-6)
    other, _ = run([2, 3])
    assert not torch.allclose(expression, other)


def test_ddim_is_deterministic_given_the_initial_noise_and_ancestral_is_not():
    """Same starting noise, different generator streams afterwards: DDIM ends in the same place."""
    from alphastomics.diffusion import sampler as sampler_module

    model, batch = _toy_model(), _toy_batch(B=1)
    schedule = NoiseSchedule(20)
    results = {}
    for name in ("ddim", "ancestral"):
        outs = []
        for later_seed in (10, 11):
            generator = torch.Generator().manual_seed(0)
            first = sampler_module.expression_noise((1, 12, 6), batch.node_mask, generator)
            # replay: same initial noise, then a different stream for the steps
            stream = torch.Generator().manual_seed(later_seed)
            original = sampler_module.expression_noise
            calls = {"n": 0}

            def noise(shape, mask, gen, _first=first, _stream=stream):
                calls["n"] += 1
                return _first.clone() if calls["n"] == 1 else original(shape, mask, _stream)

            sampler_module.expression_noise = noise
            try:
                out, _ = sampler_module.sample(model, schedule, batch, True, False, True, steps=5, sampler=name, progress=False)
            finally:
                sampler_module.expression_noise = original
            outs.append(out)
        results[name] = torch.allclose(outs[0], outs[1])
    assert results == {"ddim": True, "ancestral": False}


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_expression_temperature_scales_the_noise_each_ancestral_step_adds(temperature):
    """A model that predicts x0 = x_t makes the ancestral chain linear: each step scales the state
    by c = sqrt(ab_s)(1 - a)/(1 - ab_t) + sqrt(a)(1 - ab_s)/(1 - ab_t) and adds noise of variance
    temperature^2 (1 - a)(1 - ab_s)/(1 - ab_t), so the returned state's variance follows a recursion
    computed here without the sampler. Coordinates keep the full noise whatever the temperature."""
    from alphastomics.diffusion.sampler import sample, timestep_grid
    from alphastomics.model.network import Prediction

    def identity(expression, positions, *args, **kwargs):
        return Prediction(expression, positions, torch.tensor(0.0))

    schedule = NoiseSchedule(20)
    batch = _toy_batch(B=1, N=4000)
    expression, positions = sample(identity, schedule, batch, True, True, False, steps=8, progress=False,
                                   generator=torch.Generator().manual_seed(0), expression_temperature=temperature)

    def expected_variance(scale):
        ab = schedule.alpha_bar("expression").double()
        variance = 1.0
        grid = timestep_grid(20, 8)
        for t, s in zip(grid[:-2], grid[1:-1]):  # the last step returns x0 = x_t unchanged
            a = ab[t] / ab[s]
            c = ab[s].sqrt() * (1 - a) / (1 - ab[t]) + a.sqrt() * (1 - ab[s]) / (1 - ab[t])
            variance = c**2 * variance + scale**2 * (1 - a) * (1 - ab[s]) / (1 - ab[t])
        return float(variance)

    assert expression.var().item() == pytest.approx(expected_variance(temperature), rel=0.03)
    xy = positions[..., :2]
    assert xy.var().item() == pytest.approx(expected_variance(1.0), rel=0.05)
    if temperature != 1.0:
        assert expected_variance(temperature) < 0.9 * expected_variance(1.0)  # the test can tell the two apart


def test_classifier_free_guidance_extrapolates_expression_and_never_positions():
    """Guidance w: expression x0 = u + w (c - u) at any w; positions follow it up to the conditional
    model (w = 1) and no further, since extrapolated positions stretch the tissue."""
    from alphastomics.diffusion.sampler import _guided
    from alphastomics.model.network import Prediction

    g = torch.Generator().manual_seed(0)
    u = Prediction(torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g), torch.tensor(0.0))
    c = Prediction(torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g), torch.tensor(0.0))
    for w in (0.0, 0.5, 1.0, 2.0, 3.5):
        out = _guided(u, c, w)
        torch.testing.assert_close(out.expression, (1 - w) * u.expression + w * c.expression)
        expected = (1 - w) * u.positions + w * c.positions if w <= 1 else c.positions
        torch.testing.assert_close(out.positions, expected)


def test_position_denoising_benchmark_ratio_is_one_for_a_network_that_moves_nothing_and_zero_for_an_oracle(monkeypatch):
    """benchmarks/position_denoising.py: MSE of the coordinate estimate over that of the shrunk noisy input."""
    import importlib.util
    from pathlib import Path
    from types import SimpleNamespace

    from alphastomics.data.batch import SliceBatch
    from alphastomics.model.network import Prediction, masked_centre, precondition

    benchmarks = Path(__file__).parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # as when run as a script: its helpers sit beside it
    spec = importlib.util.spec_from_file_location("position_denoising", benchmarks / "position_denoising.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    n = 300
    positions = torch.zeros(1, n, 3)
    positions[0, :, :2] = torch.from_numpy(np.random.default_rng(0).uniform(0, 3, size=(n, 2))).float()
    batch = SliceBatch(expression=torch.zeros(1, n, 4), expression_target=torch.ones(1, n, 4), positions=positions,
                       node_mask=torch.ones(1, n, dtype=torch.bool), gene_mask=torch.ones(1, 4),
                       dim_mask=torch.tensor([[1.0, 1.0, 0.0]]))
    clean = masked_centre(positions, batch.node_mask)
    schedule = NoiseSchedule(200, 1.0, 1.0)

    def still(expression, x_t, t_e, t_p, ab_e, ab_p, *rest):
        c_skip, _ = precondition(ab_p)
        return Prediction(expression=expression, positions=torch.where(batch.dim_mask[:, None, :].bool(), c_skip * x_t, x_t),
                          aux_loss=torch.zeros(()))

    def oracle(expression, x_t, *rest):
        return Prediction(expression=expression, positions=clean, aux_loss=torch.zeros(()))

    def halfway(expression, x_t, t_e, t_p, ab_e, ab_p, *rest):  # halves the shrunk input's error: ratio 1/4
        c_skip, _ = precondition(ab_p)
        return Prediction(expression=expression, positions=(c_skip * x_t + clean) / 2, aux_loss=torch.zeros(()))

    for network, expected in ((still, 1.0), (oracle, 0.0), (halfway, 0.25)):
        model = SimpleNamespace(frame=SimpleNamespace(kind="per_slice"), schedule=schedule, network=network)
        ratios = bench.denoising_ratios(model, batch, [2, 15, 120], repeats=2, seed=0)
        assert list(ratios) == [2, 15, 120]
        assert all(r == pytest.approx(expected, abs=1e-6) for r in ratios.values()), (network.__name__, ratios)
