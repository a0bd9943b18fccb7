"""The atlas prior of shared frames: each cell with a given position is shown the training atlas's
expression near it, a training section's from the other sections only."""

import dataclasses

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from alphastomics.data.atlas_prior import AtlasReference
from alphastomics.data.expression import ExpressionCodec
from alphastomics.io.shards import load_slice

TRAINING = ("slab0", "slab1", "slab3")


@pytest.fixture(scope="module")
def slabs(bdtnp_dir):
    return {s: load_slice(bdtnp_dir, s) for s in (*TRAINING, "slab2")}


@pytest.fixture(scope="module")
def reference(slabs):
    training = [slabs[s] for s in TRAINING]
    codec = ExpressionCodec.fit([s.expression for s in training], [s.gene_mask for s in training], "zero_aware")
    return codec, AtlasReference.fit(training, codec, neighbours=15)


def test_a_sections_prior_is_its_neighbours_mean_in_the_other_sections_only(slabs, reference):
    codec, ref = reference
    slab1 = slabs["slab1"]
    prior = ref.prior(slab1.coords, exclude="slab1")
    C = codec.num_channels
    assert prior.shape == (len(slab1.coords), ref.width) and ref.width > C
    others = [slabs["slab0"], slabs["slab3"]]
    coords = np.concatenate([o.coords for o in others])
    channels = np.concatenate([codec.encode(o.expression, o.gene_mask)[0] for o in others]).astype(np.float16)
    distance, nearest = cKDTree(coords).query(slab1.coords, k=15)
    assert np.allclose(prior[:, :C], channels[nearest].astype(np.float32).mean(1), atol=1e-3)
    # closeness: 1 where the neighbours are near, falling with their distance
    closeness = prior[:, C]
    assert np.all((closeness > 0) & (closeness <= 1))
    assert np.allclose(closeness, np.exp(-distance.mean(1) / ref.spacing / 2.0), atol=1e-4)
    # without leaving it out, a section's prior is mostly itself: closer to its own expression, and near
    own, _ = codec.encode(slab1.expression, slab1.gene_mask)
    with_own = ref.prior(slab1.coords)
    assert np.abs(with_own[:, :C] - own).mean() < 0.8 * np.abs(prior[:, :C] - own).mean()
    assert np.median(with_own[:, C]) > np.median(closeness)


def test_training_priors_range_from_the_section_left_out_to_a_hole_around_each_cell(slabs, reference):
    codec, ref = reference
    slab1 = slabs["slab1"]
    variants = ref.training_priors(slab1.coords, "slab1")
    C = codec.num_channels
    assert variants.shape == (5, len(slab1.coords), ref.width)
    assert np.allclose(variants[0], ref.prior(slab1.coords, exclude="slab1"), atol=2e-3)
    closeness = np.median(variants[:, :, C].astype(np.float32), axis=1)
    # smaller holes, nearer neighbours; every hole leaves them farther than the section's own would be
    assert np.all(np.diff(closeness[1:]) < 0) and closeness[1] > closeness[0]
    assert closeness[1] < np.median(ref.prior(slab1.coords)[:, C])
    # a cell's own cube is left out: never its own expression
    own, _ = codec.encode(slab1.expression, slab1.gene_mask)
    assert np.abs(variants[1, :, :C].astype(np.float32) - own).mean() > 0.1


def test_the_held_out_slab_prior_says_what_is_expressed_where(slabs, reference):
    codec, ref = reference
    slab2 = slabs["slab2"]
    prior = codec.decode_expectation(ref.prior(slab2.coords)[None, :, : codec.num_channels])[0]
    genes = [g for g in range(slab2.expression.shape[1]) if slab2.expression[:, g].std() > 0]
    pearson = [np.corrcoef(prior[:, g], slab2.expression[:, g])[0, 1] for g in genes]
    # the slab lies between two training slabs: their cells near each of its cells say much (the
    # every-slice benchmark's 15-NN row reached 0.785 on this slab)
    assert np.median(pearson) > 0.6


def test_one_training_section_is_its_own_prior_beyond_a_hole(slabs, reference):
    # two z-planes of one embryo, one held out: the other plane is the whole atlas
    codec, _ = reference
    slab1 = slabs["slab1"]
    ref = AtlasReference.fit([slab1], codec, neighbours="auto")
    assert ref is not None and ref.neighbours in ref.choose_neighbours()
    variants = ref.training_priors(slab1.coords, "slab1")
    C = codec.num_channels
    assert variants.shape == (4, len(slab1.coords), ref.width)  # the holes; there is no other section
    own, _ = codec.encode(slab1.expression, slab1.gene_mask)
    assert np.abs(variants[0, :, :C].astype(np.float32) - own).mean() > 0.1
    assert np.all(variants[:, :, C] > 0)  # every cell has a prior, its neighbours beyond the hole
    # the neighbouring slab's cells near slab2's say what is expressed there
    slab2 = slabs["slab2"]
    prior = codec.decode_expectation(ref.prior(slab2.coords)[None, :, :C])[0]
    genes = [g for g in range(slab2.expression.shape[1]) if slab2.expression[:, g].std() > 0]
    assert np.median([np.corrcoef(prior[:, g], slab2.expression[:, g])[0, 1] for g in genes]) > 0.3


def test_reference_needs_sections_and_neighbours_and_round_trips(slabs, reference):
    codec, ref = reference
    assert AtlasReference.fit([], codec, 15) is None
    assert AtlasReference.fit([slabs[s] for s in TRAINING], codec, 0) is None
    again = AtlasReference.from_dict(ref.to_dict())
    assert np.array_equal(again.prior(slabs["slab2"].coords), ref.prior(slabs["slab2"].coords))


def test_auto_neighbours_average_more_cells_where_single_cells_are_noisier(slabs):
    # the BDTNP atlas is averaged expression, smooth in space: few neighbours predict a section best;
    # the same atlas with each cell's own noise on top needs more of them to average it away
    training = [slabs[s] for s in TRAINING]
    rng = np.random.default_rng(0)
    noisy = [dataclasses.replace(s, expression=np.clip(s.expression + rng.normal(0, 2 * s.expression.std(0), s.expression.shape), 0, None)
                                 .astype(np.float32)) for s in training]
    chosen = {}
    for name, sections in (("smooth", training), ("noisy", noisy)):
        codec = ExpressionCodec.fit([s.expression for s in sections], [s.gene_mask for s in sections], "zero_aware")
        ref = AtlasReference.fit(sections, codec, neighbours="auto")
        scores = ref.choose_neighbours()
        assert ref.neighbours == max(scores, key=scores.get)
        chosen[name] = ref.neighbours
    assert chosen["smooth"] <= 15 < chosen["noisy"]


@pytest.fixture(scope="module")
def prior_model(bdtnp_dir, tmp_path_factory, one_torch_thread):
    from alphastomics.config import config_from_dict
    from alphastomics.train import train
    from conftest import SMALL_MODEL

    tmp = tmp_path_factory.mktemp("prior_model")
    config = dict(SMALL_MODEL, model={**SMALL_MODEL["model"], "atlas_prior_neighbours": 15})
    train(config_from_dict(config), bdtnp_dir, tmp / "run", test_ids=["slab2"], export_to=tmp / "model.ckpt",
          coordinate_frame="shared", section_axis="x")
    return tmp / "model.ckpt"


def test_model_carries_its_reference_and_uses_the_prior_only_where_positions_are_given(prior_model, bdtnp_dir, tmp_path):
    import anndata as ad

    from alphastomics.checkpoint import load_model
    from alphastomics.cli import main
    from alphastomics.draws import known_batch
    from alphastomics.model.network import DenoiserInput, denoise

    model = load_model(prior_model)
    assert model.atlas_reference is not None and model.atlas_reference.slice_ids == list(TRAINING)
    slab2 = load_slice(bdtnp_dir, "slab2")
    batch = known_batch(model, slab2, "pos_to_expr")
    assert batch.atlas_prior is not None and known_batch(model, slab2, "joint").atlas_prior is None
    # the prior gets through to the estimate: a trained gate, and the input projection
    assert float(model.network.prior_gate.weight.detach().abs().sum()) > 0
    n = batch.expression.shape[1]
    noise = torch.randn_like(batch.expression)
    for t_position, changes in ((0, True), (10, False)):
        t = torch.tensor([10])
        state = DenoiserInput(noise, batch.positions, t, torch.tensor([t_position]), model.schedule.alpha_bar("expression")[t],
                              model.schedule.alpha_bar("position")[torch.tensor([t_position])])
        with torch.no_grad():
            shown = denoise(model.network, state, batch).expression
            hidden = denoise(model.network, state, dataclasses.replace(batch, atlas_prior=None)).expression
        assert bool((shown - hidden).abs().max() > 1e-4) == changes, f"t_position={t_position}, {n} cells"
    # where the prior is shown, the cells' absolute place is not: the section moved along the frame
    # (the same relative layout, the same prior) gets the same estimate; without the prior it does not
    t = torch.tensor([10])
    moved = dataclasses.replace(batch, positions=batch.positions + torch.tensor([0.5, 0.0, 0.0]) * batch.node_mask[..., None])
    for prior_shown in (True, False):
        estimates = []
        for b in (batch, moved):
            b = b if prior_shown else dataclasses.replace(b, atlas_prior=None)
            state = DenoiserInput(noise, b.positions, t, torch.tensor([0]), model.schedule.alpha_bar("expression")[t],
                                  model.schedule.alpha_bar("position")[torch.tensor([0])])
            with torch.no_grad():
                estimates.append(denoise(model.network, state, b).expression)
        assert bool((estimates[0] - estimates[1]).abs().max() > 1e-4) != prior_shown
    # sampling a held-out slab and a user's file (the reference travels in the model file)
    out = tmp_path / "pos_to_expr.h5ad"
    assert main(["sample", "--checkpoint", str(prior_model), "--data", str(bdtnp_dir), "--slice", "slab2", "--mode",
                 "pos_to_expr", "--num-samples", "1", "--steps", "3", "--out", str(out)]) == 0
    sample = ad.read_h5ad(out)
    assert sample.layers["expr_pred_mean"].shape == (slab2.expression.shape[0], len(model.genes))
    assert np.isfinite(sample.layers["expr_pred_mean"]).all()
