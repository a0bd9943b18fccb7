"""The network: O(n) equivariance, gating, mixture of experts, parameter counts."""

import dataclasses

import pytest
import torch
from scipy.spatial.transform import Rotation

from alphastomics.config import ModelConfig
from alphastomics.model.attention import EquivariantLinearAttention
from alphastomics.model.moe import MixtureOfExperts
from alphastomics.model.local import LocalMessagePassing, knn_graph
from alphastomics.model.network import AlphaSTomicsNet, count_parameters



@pytest.fixture(autouse=True)
def float64():
    """Equivariance is checked to 1e-4; float64 keeps rounding far below that."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _inputs(B=2, N=50, G=12, seed=0, n_dims=3, channels=24):
    g = torch.Generator().manual_seed(seed)
    expression = torch.randn(B, N, channels, generator=g)
    positions = torch.randn(B, N, 3, generator=g) * 3
    if n_dims == 2:
        positions[..., 2] = 0
    node_mask = torch.ones(B, N, dtype=torch.bool)
    node_mask[1, 40:] = False  # padding in the second example
    gene_mask = torch.ones(B, G)
    gene_mask[0, :3] = 0
    t = torch.tensor([5, 80])
    dim_mask = torch.tensor([[1.0, 1.0, 1.0 if n_dims == 3 else 0.0]] * B)
    return expression, positions, t, node_mask, gene_mask, dim_mask


def _run(net, expression, positions, t, node_mask, gene_mask, dim_mask, alpha_bar=None):
    """Both modalities noised at step t, noise level alpha_bar (default 0.6 and 0.3)."""
    alpha_bar = torch.tensor([0.6, 0.3])[: len(t)] if alpha_bar is None else alpha_bar
    return net(expression, positions, t, t, alpha_bar, alpha_bar, node_mask, gene_mask, dim_mask)


def _exercise_coordinates(net):
    """Non-zero position weights so the coordinate path is actually exercised."""
    for block in net.blocks:
        torch.nn.init.normal_(block.attention.position_weight.weight, std=0.5)
        if block.local is not None:
            torch.nn.init.normal_(block.local.position_weight.weight, std=0.5)


VARIANTS = {
    "dense": {},
    "global_attention_only": {"local_neighbours": 0},
    "gated_headwise": {"use_gated_attention": True, "gate_type": "headwise"},
    "gated_elementwise": {"use_gated_attention": True, "gate_type": "elementwise"},
    "moe": {"use_moe": True, "num_experts": 4, "moe_top_k": 2},
    "learned_time_gated_moe": {"time_embedding": "learned", "use_gated_attention": True, "use_moe": True},
}


def _net(config, absolute_positions=False):
    channel_genes = list(range(12)) * 2  # magnitude and presence channel of each gene
    return AlphaSTomicsNet(config, channel_genes, num_genes=12, diffusion_steps=100, absolute_positions=absolute_positions)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_translation_equivariance(variant, reflect):
    torch.manual_seed(0)
    config = ModelConfig(hidden_dim=32, num_layers=3, num_heads=4, **{"local_neighbours": 8, **VARIANTS[variant]})
    net = _net(config).eval()
    _exercise_coordinates(net)
    expression, positions, t, node_mask, gene_mask, dim_mask = _inputs()
    rotation = torch.from_numpy(Rotation.random(random_state=1).as_matrix())
    if reflect:
        rotation = rotation @ torch.diag(torch.tensor([1.0, 1.0, -1.0]))
    shift = torch.tensor([10.0, -4.0, 2.5])
    with torch.no_grad():
        out = _run(net, expression, positions, t, node_mask, gene_mask, dim_mask)
        moved = _run(net, expression, positions @ rotation.T + shift, t, node_mask, gene_mask, dim_mask)
    m = node_mask[..., None]
    assert torch.allclose(moved.expression * m, out.expression * m, atol=1e-4)
    # Predictions are centred, so translation drops out and only the rotation remains.
    assert torch.allclose(moved.positions * m, (out.positions @ rotation.T) * m, atol=1e-4)
    # The coordinate path changes positions beyond the preconditioning's shrink of the input: the
    # test would catch a network whose output ignores its features.
    centred = positions - (positions * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
    c_skip = torch.tensor([0.6, 0.3]).sqrt() / (torch.tensor([0.6, 0.3]) + torch.tensor([0.4, 0.7]))
    assert ((out.positions - c_skip[:, None, None] * centred) * m).abs().max() > 1e-3


def test_shared_frame_sees_absolute_position():
    """In a shared frame the network may use absolute coordinates: a translation changes expression."""
    torch.manual_seed(0)
    net = _net(ModelConfig(hidden_dim=32, num_layers=2, num_heads=4), absolute_positions=True).eval()
    expression, positions, t, node_mask, gene_mask, dim_mask = _inputs()
    with torch.no_grad():
        out = _run(net, expression, positions, t, node_mask, gene_mask, dim_mask)
        moved = _run(net, expression, positions + torch.tensor([0.7, 0.0, 0.0]), t, node_mask, gene_mask, dim_mask)
    assert (out.expression - moved.expression).abs().max() > 1e-3


@pytest.mark.parametrize("absolute", [False, True])
def test_2d_slices_keep_their_unused_axis(absolute):
    torch.manual_seed(0)
    net = _net(ModelConfig(hidden_dim=32, num_layers=2, num_heads=4), absolute_positions=absolute).eval()
    _exercise_coordinates(net)
    expression, positions, t, node_mask, gene_mask, dim_mask = _inputs(n_dims=2)
    positions[..., 2] = 0.0 if not absolute else 1.25  # a 2D section at z = 1.25 of a shared frame
    with torch.no_grad():
        out = _run(net, expression, positions, t, node_mask, gene_mask, dim_mask)
    m = node_mask
    assert torch.all(out.positions[..., 2][m] == positions[..., 2][m])


def test_given_modalities_pass_through_unchanged():
    """At noise level 1 (given) the preconditioned output is the input, whatever the network computes."""
    torch.manual_seed(0)
    net = _net(ModelConfig(hidden_dim=32, num_layers=2, num_heads=4), absolute_positions=True).eval()
    _exercise_coordinates(net)
    expression, positions, t, node_mask, gene_mask, dim_mask = _inputs()
    with torch.no_grad():
        out = _run(net, expression, positions, torch.zeros(2, dtype=torch.long), node_mask, gene_mask, dim_mask,
                   alpha_bar=torch.ones(2))
    m = node_mask[..., None]
    assert torch.equal(out.expression * m, expression * m)
    assert torch.allclose(out.positions * m, positions * m, atol=1e-12)


def test_padding_does_not_change_real_cells():
    torch.manual_seed(0)
    net = _net(ModelConfig(hidden_dim=32, num_layers=2, num_heads=4, local_neighbours=8)).eval()
    _exercise_coordinates(net)
    expression, positions, t, node_mask, gene_mask, dim_mask = _inputs()
    ab = torch.tensor([0.3])
    with torch.no_grad():
        full = net(expression[1:, :40], positions[1:, :40], t[1:], t[1:], ab, ab, node_mask[1:, :40], gene_mask[1:], dim_mask[1:])
        padded = net(expression[1:], positions[1:], t[1:], t[1:], ab, ab, node_mask[1:], gene_mask[1:], dim_mask[1:])
    assert torch.allclose(full.expression, padded.expression[:, :40], atol=1e-8)
    assert torch.allclose(full.positions, padded.positions[:, :40], atol=1e-8)


def test_linear_attention_matches_explicit_weights():
    """The O(N) computation equals the explicit N x N row-normalised attention."""
    torch.manual_seed(0)
    attn = EquivariantLinearAttention(16, num_heads=2)
    torch.nn.init.normal_(attn.position_weight.weight, std=0.5)
    h = torch.randn(1, 30, 16)
    x = torch.randn(1, 30, 3)
    mask = torch.ones(1, 30, dtype=torch.bool)
    _, dx = attn(h, x, mask)
    q, k, _ = attn.qkv(h).reshape(1, 30, 3, 2, 8).unbind(2)
    q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
    weights = torch.einsum("nhd,mhd->hnm", q[0], k[0])
    weights = weights / weights.sum(-1, keepdim=True)
    centroid = torch.einsum("hnm,mc->nhc", weights, x[0])
    w = torch.tanh(attn.position_weight(h[0]))
    expected = (w[..., None] * (x[0][:, None, :] - centroid)).sum(1)
    assert torch.allclose(dx[0], expected, atol=1e-10)


def test_knn_graph_and_local_layer_match_brute_force():
    torch.manual_seed(0)
    N, D, k = 40, 16, 5
    x = torch.randn(1, N, 3)
    h = torch.randn(1, N, D)
    mask = torch.ones(1, N, dtype=torch.bool)
    index, valid = knn_graph(x, mask, k)
    distances = torch.cdist(x[0], x[0]) + torch.eye(N) * 1e9
    expected = distances.topk(k, largest=False).indices
    assert torch.equal(index[0].sort(-1).values, expected.sort(-1).values) and valid.all()
    layer = LocalMessagePassing(D)
    torch.nn.init.normal_(layer.position_weight.weight, std=0.5)
    dh, dx = layer(h, x, index, valid)
    for i in (0, 17):
        js = index[0, i]
        offset = x[0, i] - x[0, js]
        d = offset.norm(dim=-1, keepdim=True)
        geometry = torch.log(d + 1e-4) * layer.log_distance + d * layer.distance
        message = torch.nn.functional.silu(layer.source(h[0, i]) + layer.neighbour(h[0, js]) + geometry)
        assert torch.allclose(dh[0, i], layer.out(message.mean(0)), atol=1e-5)
        weight = torch.tanh(layer.position_weight(message))
        assert torch.allclose(dx[0, i], (weight * offset / (1 + d)).mean(0), atol=1e-6)


def test_small_slices_get_all_other_cells_as_neighbours():
    x = torch.randn(2, 6, 3)
    mask = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    index, valid = knn_graph(x, mask, 8)
    assert valid[0].sum(-1).tolist() == [5] * 6
    assert valid[1, :3].sum(-1).tolist() == [2] * 3 and not valid[1, 3:].any()


def test_gates_change_the_output():
    torch.manual_seed(0)
    base = ModelConfig(hidden_dim=32, num_layers=1, num_heads=4)
    gated = dataclasses.replace(base, use_gated_attention=True, gate_type="headwise")
    a = _net(base)
    b = _net(gated)
    assert b.blocks[0].attention.gate.out_features == 4  # one gate per head
    elementwise = _net(dataclasses.replace(gated, gate_type="elementwise"))
    assert elementwise.blocks[0].attention.gate.out_features == 32  # one gate per element
    assert count_parameters(b)[0] - count_parameters(a)[0] == 32 * 4 + 4


def test_moe_routes_top_k_and_balances():
    torch.manual_seed(0)
    moe = MixtureOfExperts(dim=16, hidden=32, num_experts=4, top_k=2)
    h = torch.randn(2, 64, 16)
    mask = torch.ones(2, 64, dtype=torch.bool)
    out, aux = moe(h, mask)
    assert out.shape == h.shape
    # Output equals the explicit top-2 mixture for one token.
    probs = torch.softmax(moe.router(h[0, 0]), -1)
    p, e = probs.topk(2)
    p = p / p.sum()
    expected = sum(p[i] * moe.experts[int(e[i])](h[0, 0])[0] for i in range(2))
    assert torch.allclose(out[0, 0], expected, atol=1e-8)
    assert aux >= 1.0 - 1e-6  # E * sum f_e P_e >= 1 with equality only for uniform routing
    # Padded tokens get no output.
    mask[1, 10:] = False
    out, _ = moe(h, mask)
    assert out[1, 10:].abs().max() == 0


def test_moe_parameter_counts():
    config = ModelConfig(hidden_dim=32, num_layers=2, num_heads=4, use_moe=True, num_experts=8, moe_top_k=2)
    net = AlphaSTomicsNet(config, list(range(20)) * 2, 20, 100)
    total, active = count_parameters(net)
    per_expert = sum(p.numel() for p in net.blocks[0].ffn.experts[0].parameters())
    assert total == sum(p.numel() for p in net.parameters())
    assert total - active == 2 * per_expert * (8 - 2)


def test_conditions_before_every_block_start_as_the_input_only_network_and_then_reach_every_block():
    """model.condition_every_block: per-block projections of the condition embedding, zero at start."""
    expression, positions, t, node_mask, gene_mask, dim_mask = _inputs()
    labels = torch.tensor([[1, 2, 3, 1, 2] * 10, [3, 3, 1, 1, 2] * 10])
    alpha_bar = torch.tensor([0.6, 0.3])
    config = ModelConfig(hidden_dim=32, num_layers=3, num_heads=4)
    channel_genes = list(range(12)) * 2

    def net(every: bool):
        torch.manual_seed(0)
        return AlphaSTomicsNet(dataclasses.replace(config, condition_every_block=every), channel_genes, num_genes=12,
                               diffusion_steps=100, condition_sizes=(4, []))

    def run(model, cell_labels):
        return model(expression, positions, t, t, alpha_bar, alpha_bar, node_mask, gene_mask, dim_mask, None, cell_labels, None)

    input_only, every = net(False), net(True)
    assert input_only.conditions_per_block is None and len(every.conditions_per_block) == 3
    start_a, start_b = run(input_only, labels), run(every, labels)
    assert torch.equal(start_a.expression, start_b.expression) and torch.equal(start_a.positions, start_b.positions)

    (run(every, labels).expression.pow(2).mean() + run(every, labels).positions.pow(2).mean()).backward()
    assert all(p.weight.grad.abs().sum() > 0 for p in every.conditions_per_block)  # the projections learn

    with torch.no_grad():
        for projection in every.conditions_per_block:
            torch.nn.init.normal_(projection.weight, std=0.5)
    other = labels.flip(-1)
    moved = (run(every, labels).expression - run(every, other).expression).abs().mean()
    moved_input_only = (run(input_only, labels).expression - run(input_only, other).expression).abs().mean()
    assert moved > moved_input_only  # labels now enter every block, not just the first
    no_labels = run(every, None)  # unconditioned calls (labels absent) still run
    assert torch.isfinite(no_labels.expression).all()


def test_sampling_takes_the_local_layer_a_block_of_cells_at_a_time_with_the_same_result(monkeypatch):
    """Without gradients (sampling) the per-edge work runs in blocks of cells, so its memory stays a
    block's at any section size; each cell's update is the one the whole section at once gives,
    padding and a batch of two slices included."""
    import alphastomics.model.local as local

    torch.manual_seed(1)
    N, D, k = 50, 8, 6
    x, h = torch.randn(2, N, 3), torch.randn(2, N, D)
    mask = torch.ones(2, N, dtype=torch.bool)
    mask[1, 40:] = False
    index, valid = knn_graph(x, mask, k)
    layer = LocalMessagePassing(D)
    torch.nn.init.normal_(layer.position_weight.weight, std=0.5)
    with torch.no_grad():
        whole = layer(h, x, index, valid)
        monkeypatch.setattr(local, "INFERENCE_CHUNK_CELLS", 7)
        blocks = layer(h, x, index, valid)
    for a, b in zip(whole, blocks):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)
