"""Sections of one atlas (issue 34): a section's place along the cutting axis as an input, its
estimate from expression, sampling at a place, and the placement metrics."""

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from alphastomics.data.frames import CoordinateFrame
from alphastomics.data.places import Place, SectionPlaces, section_extent
from alphastomics.errors import InputError
from alphastomics.io.shards import load_slice
from alphastomics.metrics.geometry import placement_metrics

REPO = Path(__file__).resolve().parents[1]
SLAB2 = REPO / "resources/bdtnp_drosophila/bdtnp_slab2.h5ad"


def _cli(*args) -> int:
    """The command line in this process (each subprocess would pay the imports again)."""
    from alphastomics.cli import main

    return main([str(a) for a in args])


def test_place_parses_a_plane_or_a_slab_and_refuses_anything_else():
    assert Place.parse("-12.5") == Place(-12.5, -12.5)
    assert Place.parse("2:80") == Place(2.0, 80.0) and Place(2.0, 80.0).centre == 41.0
    for bad in ("x", "1:2:3", "80:2", "nan", ""):
        with pytest.raises(InputError, match="--section-at"):
            Place.parse(bad)


@pytest.fixture(scope="module")
def training_slabs(bdtnp_dir):
    return [load_slice(bdtnp_dir, s) for s in ("slab0", "slab1", "slab3")]


def test_frame_measures_the_cutting_axis_from_the_place_and_maps_back(training_slabs):
    places = SectionPlaces.fit(0, training_slabs)
    frame = CoordinateFrame.fit("shared", [(s.coords, s.n_dims) for s in training_slabs], places)
    half = []
    for s in training_slabs:
        place = section_extent(s.coords, 0)
        model = frame.to_model(s.coords, 3, place)
        assert np.allclose(frame.to_source(model, 3, place), s.coords, atol=1e-3)
        half.append(model[:, 0].max() - model[:, 0].min())
        assert abs(model[:, 0].mean()) < 0.5  # each slab about its own place
        # the network's view of the place maps back to it
        back = frame.place_from_features(np.float32(frame.place_features(place)))
        assert back.low == pytest.approx(place.low, abs=1e-3) and back.high == pytest.approx(place.high, abs=1e-3)
    assert np.ptp(half) < 1e-4  # every slab as thick as the typical one in the model frame
    # the frame round-trips through its dict (the model file)
    again = CoordinateFrame.from_dict(frame.to_dict())
    assert again.places.training == places.training and again.places.coefficients == places.coefficients
    with pytest.raises(ValueError, match="place"):
        frame.to_model(training_slabs[0].coords, 3)


def test_place_of_a_held_out_slab_is_estimated_within_its_thickness(training_slabs, bdtnp_dir):
    """Fit on slabs 0, 1 and 3 of the real embryo; slab2 lies in the gap between slab1 and slab3."""
    places = SectionPlaces.fit(0, training_slabs)
    held_out = load_slice(bdtnp_dir, "slab2")
    estimate, per_cell = places.estimate(held_out.expression, held_out.gene_mask)
    truth = section_extent(held_out.coords, 0)
    assert abs(estimate.centre - truth.centre) < truth.high - truth.low
    assert estimate.half_width == pytest.approx(places.typical_half_width)
    assert per_cell.shape == (len(held_out.cell_ids),)
    assert places.estimate_error is not None and places.estimate_error > 0  # each training slab left out in turn
    assert not places.outside_training(estimate) and places.outside_training(Place(-300, -250))


def test_placement_metrics_count_cells_inside_the_true_range():
    rng = np.random.default_rng(0)
    true = rng.uniform([0, 0, 0], [10, 50, 50], size=(500, 3))
    inside = true + rng.normal(0, 0.1, true.shape)
    inside[:, 0] = np.clip(inside[:, 0], true[:, 0].min(), true[:, 0].max())
    values, _ = placement_metrics(true, inside, 0)
    assert values["place_inside_fraction"] == 1.0 and values["place_true_to_generated_spacing"] < 0.5
    shifted = true + [20.0, 0.0, 0.0]
    values, _ = placement_metrics(true, shifted, 0)
    assert values["place_inside_fraction"] == 0.0 and values["place_true_to_generated_median"] > 9.9


@pytest.fixture(scope="module")
def placed_model(bdtnp_dir, tmp_path_factory, one_torch_thread):
    from alphastomics.config import config_from_dict
    from alphastomics.train import train
    from conftest import SMALL_MODEL

    tmp = tmp_path_factory.mktemp("placed_model")
    train(config_from_dict(SMALL_MODEL), bdtnp_dir, tmp / "run", test_ids=["slab2"], export_to=tmp / "model.ckpt",
          coordinate_frame="shared", section_axis="x")
    return tmp / "model.ckpt"


def test_sampling_at_a_place_records_it_and_generates_there(placed_model, bdtnp_dir, tmp_path, caplog):
    out = tmp_path / "joint.h5ad"
    assert _cli("sample", "--checkpoint", placed_model, "--data", bdtnp_dir, "--slice", "slab2", "--mode", "joint",
                "--section-at=-150:-110", "--num-samples", "1", "--steps", "5", "--out", out) == 0
    joint = ad.read_h5ad(out)
    record = joint.uns["alphastomics"]["section_place"]
    assert record["source"] == "given" and (record["low"], record["high"]) == (-150, -110) and not record["outside_training"]
    x = joint.obsm["spatial_pred"][:, 0]
    # a model of a few steps: most cells within the slab, every one near it (the benchmark measures the trained model)
    assert np.mean((x >= -150) & (x <= -110)) > 0.75 and -150 < np.median(x) < -110 and np.all(np.abs(x + 130) < 60)
    # expr_to_pos estimates the place, records the estimate beside the truth; evaluate scores it
    out = tmp_path / "placed.h5ad"
    assert _cli("sample", "--checkpoint", placed_model, "--data", bdtnp_dir, "--slice", "slab2", "--mode", "expr_to_pos",
                "--num-samples", "2", "--steps", "5", "--out", out) == 0
    record = ad.read_h5ad(out).uns["alphastomics"]["section_place"]
    assert record["source"] == "estimated from expression" and abs(record["centre_error"]) < 78
    table = tmp_path / "metrics.tsv"
    assert _cli("evaluate", out, "--out", table) == 0
    rows = pd.read_csv(table, sep="\t")
    metrics = dict(zip(rows["metric"], rows["value"]))
    assert float(metrics["place_centre_error_abs"]) == pytest.approx(abs(record["centre_error"]), rel=1e-4)
    assert 0.0 <= float(metrics["place_inside_fraction"]) <= 1.0
    # beyond the training places: sampled, logged and recorded as extrapolated
    out = tmp_path / "far.h5ad"
    assert _cli("sample", "--checkpoint", placed_model, "--data", bdtnp_dir, "--slice", "slab2", "--mode", "joint",
                "--section-at", "400", "--num-samples", "1", "--steps", "3", "--out", out) == 0
    assert "outside the training sections" in caplog.text
    assert bool(ad.read_h5ad(out).uns["alphastomics"]["section_place"]["outside_training"])


def test_own_file_places_from_an_obs_column_and_clear_errors(placed_model, small_models, tmp_path, capsys):
    slab = ad.read_h5ad(SLAB2)
    slab.obs["x_place"] = slab.obsm["spatial"][:, 0]
    own = tmp_path / "own slab.h5ad"
    slab.write_h5ad(own)
    out = tmp_path / "own.h5ad"
    assert _cli("sample", "--checkpoint", placed_model, "--data", own, "--mode", "joint", "--section-at-key", "x_place",
                "--num-samples", "1", "--steps", "3", "--out", out) == 0
    record = ad.read_h5ad(out).uns["alphastomics"]["section_place"]
    assert record["low"] == pytest.approx(float(slab.obs["x_place"].min())) and record["source"] == "given"
    failures = [
        (("--data", own, "--mode", "joint", "--section-at-key", "bregma"), "'bregma' is not an obs column"),
        (("--num-cells", "50", "--mode", "joint"), "--section-at"),
        (("--data", own, "--mode", "joint", "--section-at", "a:b"), "VALUE or LOW:HIGH"),
    ]
    for args, message in failures:
        bad = tmp_path / "bad.h5ad"
        assert _cli("sample", "--checkpoint", placed_model, *args, "--steps", "2", "--out", bad) == 1
        assert message in capsys.readouterr().err and not bad.exists(), args
    # a model trained without places refuses one
    assert _cli("sample", "--checkpoint", small_models["bdtnp"][0], "--data", own, "--mode", "joint", "--section-at", "10:50",
                "--steps", "2", "--out", tmp_path / "none.h5ad") == 1
    assert "section_axis" in capsys.readouterr().err


def test_report_says_where_each_section_was_sampled():
    from alphastomics.report.render import place_sentence

    estimated = place_sentence({"axis": "x", "low": -24.0, "high": 80.5, "source": "estimated from expression", "true_low": 2.8,
                                "true_high": 80.7, "centre_error": -13.47, "estimate_error_rms": 124.0, "outside_training": False})
    assert estimated == ("sampled at x -24.0 to 80.5 (estimated from expression; true 2.80 to 80.7, centre off by -13.5, "
                         "leave-one-section-out RMS error 124)")
    far = place_sentence({"axis": "z", "low": 400, "high": 400, "source": "given", "outside_training": True})
    assert far.endswith("extrapolated") and "z 400 to 400 (given)" in far
