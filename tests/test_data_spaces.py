"""Model spaces: the zero-aware expression code and the coordinate frames, on real data."""

import numpy as np
import pytest

from alphastomics.data.expression import ExpressionCodec
from alphastomics.data.frames import CoordinateFrame
from alphastomics.io.shards import load_slice

STARMAP_TRAIN = ["20180417_BZ5_control", "20180419_BZ9_control"]


def test_zero_aware_code_round_trips_and_keeps_exact_zeros(starmap_dir):
    slices = [load_slice(starmap_dir, s) for s in STARMAP_TRAIN]
    codec = ExpressionCodec.fit([s.expression for s in slices], [s.gene_mask for s in slices], "zero_aware")
    x = slices[0].expression
    channels, target = codec.encode(x, slices[0].gene_mask)
    G = x.shape[1]
    z = codec.zero_inflated
    pooled = np.concatenate([s.expression for s in slices])
    assert np.array_equal(z, (pooled == 0).mean(0) >= 0.05) and z.sum() > 0.8 * G  # STARmap: mostly zero-inflated
    assert channels.shape == (x.shape[0], G + z.sum())
    assert set(np.unique(channels[:, G:])) == {-1.0, 1.0}
    # magnitudes of zero-inflated genes carry a target only where expressed
    assert np.array_equal(target[:, :G][:, z] > 0, x[:, z] > 0) and target[:, :G][:, ~z].all()
    decoded = codec.decode(channels)
    assert np.allclose(decoded, x, atol=1e-4)
    assert np.array_equal(decoded == 0, x == 0)
    # any channel values decode to non-negative expression; a negative presence bit means exactly zero
    noisy = channels + np.random.default_rng(0).normal(size=channels.shape).astype(np.float32)
    out = codec.decode(noisy)
    assert (out >= 0).all() and (out[:, z][noisy[:, G:] <= 0] == 0).all()


def test_genes_that_are_rarely_zero_get_no_presence_channel(bdtnp_dir):
    """BDTNP in situ levels are almost never exactly 0: one magnitude channel per gene."""
    s = load_slice(bdtnp_dir, "slab0")
    codec = ExpressionCodec.fit([s.expression], [s.gene_mask], "zero_aware")
    assert not codec.zero_inflated.any() and codec.num_channels == s.expression.shape[1]
    channels, _ = codec.encode(s.expression, s.gene_mask)
    assert (codec.decode(channels - 10.0) >= codec.floor).all()  # never below the data's range


def test_standardised_code_round_trips(bdtnp_dir):
    s = load_slice(bdtnp_dir, "slab0")
    codec = ExpressionCodec.fit([s.expression], [s.gene_mask], "standardised")
    channels, target = codec.encode(s.expression, s.gene_mask)
    assert channels.shape == s.expression.shape and target.all()
    assert np.allclose(channels.mean(0), 0, atol=1e-4) and np.allclose(channels.std(0), 1, atol=1e-3)
    assert np.allclose(codec.decode(channels), s.expression, atol=1e-5)


def test_per_slice_scale_comes_from_cell_count_not_from_the_slice(starmap_dir):
    slices = [load_slice(starmap_dir, s) for s in STARMAP_TRAIN]
    frame = CoordinateFrame.fit("per_slice", [(s.coords, s.n_dims) for s in slices])
    test = load_slice(starmap_dir, "20180424_BZ14_control")
    model = frame.to_model(test.coords, 2)
    assert np.allclose(model.mean(0), 0, atol=1e-5) and (model[:, 2] == 0).all()
    # per-axis spread near 1 on a slice the frame never saw
    assert 0.8 < np.sqrt((model[:, :2] ** 2).mean()) < 1.25
    # a slice twice as big in source units gets the same scale (n is the same): no oracle
    assert np.allclose(frame.to_model(test.coords * 2, 2), 2 * model, atol=1e-4)
    back = frame.to_source(model, 2)
    assert np.allclose(back[:, :2], test.coords[:, :2] - test.coords[:, :2].mean(0), atol=1e-2)
    with pytest.raises(ValueError, match="no 3D coordinate scale"):
        frame.slice_scale(100, 3)


def test_frame_keeps_the_training_cells_spacing(starmap_dir, bdtnp_dir):
    from scipy.spatial import cKDTree

    slices = [load_slice(starmap_dir, s) for s in STARMAP_TRAIN]
    frame = CoordinateFrame.fit("per_slice", [(s.coords, s.n_dims) for s in slices])
    nearest = np.concatenate([cKDTree(s.coords[:, :2]).query(s.coords[:, :2], k=2)[0][:, 1] for s in slices])
    assert frame.cell_spacing == pytest.approx(np.quantile(nearest, 0.25), rel=1e-6)
    assert CoordinateFrame.from_dict(frame.to_dict()).cell_spacing == frame.cell_spacing
    # models saved before the spacing was kept leave generated cells as drawn
    old = {k: v for k, v in frame.to_dict().items() if k != "cell_spacing"}
    assert CoordinateFrame.from_dict(old).cell_spacing == 0.0
    # a shared frame's spacing is in source units too, whatever the cutting axis does to the model's
    bdtnp = [load_slice(bdtnp_dir, s) for s in ("slab0", "slab1", "slab3")]
    shared = CoordinateFrame.fit("shared", [(s.coords, s.n_dims) for s in bdtnp])
    nearest = np.concatenate([cKDTree(s.coords).query(s.coords, k=2)[0][:, 1] for s in bdtnp])
    assert shared.cell_spacing == pytest.approx(np.quantile(nearest, 0.25), rel=1e-6)


def test_shared_frame_round_trips_absolute_coordinates(bdtnp_dir):
    slices = [load_slice(bdtnp_dir, s) for s in ("slab0", "slab1", "slab3")]
    frame = CoordinateFrame.fit("shared", [(s.coords, s.n_dims) for s in slices])
    test = load_slice(bdtnp_dir, "slab2")
    model = frame.to_model(test.coords, 3)
    assert not np.allclose(model.mean(0), 0, atol=0.05)  # where the slab sits in the embryo is kept
    assert np.allclose(frame.to_source(model, 3), test.coords, atol=1e-3)
    restored = CoordinateFrame.from_dict(frame.to_dict())
    assert np.allclose(restored.to_model(test.coords, 3), model)
