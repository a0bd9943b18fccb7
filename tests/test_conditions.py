"""Conditional generation, inverse design and denoising (issue 13), on a small model trained on the
real STARmap slices with cell types as a condition."""

import importlib.util
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from alphastomics.checkpoint import load_model
from alphastomics.denoise import denoise_slice
from alphastomics.errors import InputError
from alphastomics.guidance import apply_conditions, parse_target
from alphastomics.io.shards import load_slice
from alphastomics.draws import draw_samples, expected_expression, known_batch
from alphastomics.guided import GuidanceRequest, guided_draws
from conftest import REPO, STARMAP, preprocess_dataset

# real tissue with a planted per-slice condition (a treated copy of BZ9), shared with the benchmark
_spec = importlib.util.spec_from_file_location("conditions_benchmark", REPO / "benchmarks/conditions.py")
planted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(planted)
TREATED, UP_GENES, DOWN_GENES = planted.TREATED, planted.UP_GENES, planted.DOWN_GENES

HELD_OUT = "20180424_BZ14_control"
TRAINING = ["20180417_BZ5_control", "20180419_BZ9_control"]

CONDITIONED_MODEL = {
    "model": {"hidden_dim": 32, "num_layers": 2, "num_heads": 4, "condition_on_cell_type": True,
              "slice_covariates": ["condition"]},
    "diffusion": {"diffusion_steps": 50},
    "training": {"epochs": 1000, "max_steps": 300, "examples_per_epoch": 8, "warmup_steps": 20, "lr": 2e-3,
                 "accelerator": "cpu"},
}


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "alphastomics.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def conditioned(tmp_path_factory):
    """(model file, dataset directory): STARmap with a treated copy of BZ9, BZ14 held out,
    conditioned on cell type and on the slice covariate ``condition``."""
    from alphastomics.config import config_from_dict
    from alphastomics.train import train

    tmp = tmp_path_factory.mktemp("conditioned")
    data = preprocess_dataset(tmp / "data", planted.with_treated_copy(STARMAP, tmp / "h5ad"), "starmap", "starmap_mpfc",
                              "--slice-key", "slice_id", "--cell-type-key", "cell_type", "--slice-covariates", "condition")
    train(config_from_dict(CONDITIONED_MODEL), data, tmp / "run", test_ids=[HELD_OUT], export_to=tmp / "model.ckpt")
    return tmp / "model.ckpt", data


def _type_classifier(data_dir):
    """15-NN cell-type classifier on the training slices' expression (the issue's judge)."""
    slices = [load_slice(data_dir, s) for s in TRAINING]
    x = np.concatenate([s.expression for s in slices])
    y = np.concatenate([np.asarray(s.cell_types).astype(str) for s in slices])
    return KNeighborsClassifier(15).fit(x, y)


def test_the_model_records_what_it_can_be_conditioned_on(conditioned):
    model = load_model(conditioned[0])
    assert model.conditions.cell_types == sorted(model.conditions.cell_types) and "Oligo" in model.conditions.cell_types
    assert model.network.conditions_in is not None and model.network.conditions_in.cell_type.num_embeddings == len(model.conditions.cell_types) + 1


def test_guidance_zero_is_unconditional_sampling_exactly(conditioned):
    model = load_model(conditioned[0])
    data = load_slice(conditioned[1], HELD_OUT)
    unconditional = draw_samples(model, known_batch(model, data, "joint"), "joint", 1, seed=3, steps=5, progress=False)
    batch = apply_conditions(known_batch(model, data, "joint"), model.conditions, data.cell_types, "cell_type", {}, "test")
    assert batch.cell_labels.any()
    zero = draw_samples(model, batch, "joint", 1, seed=3, steps=5, progress=False, guidance_scale=0.0)
    conditional = draw_samples(model, batch, "joint", 1, seed=3, steps=5, progress=False, guidance_scale=1.0)
    assert np.array_equal(zero.expression, unconditional.expression) and np.array_equal(zero.coordinates, unconditional.coordinates)
    assert not np.array_equal(conditional.expression, unconditional.expression)


def test_a_push_outside_the_guidance_interval_is_the_conditional_model_exactly(conditioned):
    """Guidance 3 limited to an interval no step falls in is sampling at scale 1; over every step it is not."""
    model = load_model(conditioned[0])
    data = load_slice(conditioned[1], HELD_OUT)
    batch = apply_conditions(known_batch(model, data, "joint"), model.conditions, data.cell_types, "cell_type", {}, "test")
    conditional = draw_samples(model, batch, "joint", 1, seed=3, steps=5, progress=False, guidance_scale=1.0)
    nowhere = draw_samples(model, batch, "joint", 1, seed=3, steps=5, progress=False, guidance_scale=3.0, guidance_interval=(0.0, 0.0))
    everywhere = draw_samples(model, batch, "joint", 1, seed=3, steps=5, progress=False, guidance_scale=3.0)
    assert np.array_equal(nowhere.expression, conditional.expression) and np.array_equal(nowhere.coordinates, conditional.coordinates)
    assert not np.array_equal(everywhere.expression, conditional.expression)


def test_conditioning_on_cell_type_moves_generated_cells_to_that_type(conditioned):
    """pos_to_expr on the held-out slice: a classifier trained on real training cells assigns more
    generated cells to their conditioned type with the condition than without it."""
    model = load_model(conditioned[0])
    data = load_slice(conditioned[1], HELD_OUT)
    truth = np.asarray(data.cell_types).astype(str)
    classifier = _type_classifier(conditioned[1])
    accuracy = {}
    for name, request in {"unconditional": None, "conditional": GuidanceRequest(condition="cell_type", scale=2.0)}.items():
        draws, _, _, _ = guided_draws(model, known_batch(model, data, "pos_to_expr"), data, "pos_to_expr", 1, 0, 10, "ancestral",
                                      False, request, "test")
        accuracy[name] = np.mean([np.mean(classifier.predict(d) == truth) for d in draws.expression])
    assert accuracy["conditional"] > accuracy["unconditional"] + 0.1, accuracy


def test_joint_gives_its_cells_the_training_composition_then_the_tissue_given_them(conditioned):
    """A joint sample of a model conditioned on cell type first gives its cells the training
    composition (recorded at training, checked here by hand; counts rounded, the cells that get each
    type drawn by the seed), then samples the tissue given them (guidance 3 at the middle noise
    levels by default; a scale asked for applies at every level): generated cells are typed as their
    drawn type more often than the unconditional draw with the same seed is. ``none`` is
    unconditional sampling exactly."""
    model = load_model(conditioned[0])
    data = load_slice(conditioned[1], HELD_OUT)
    training = np.concatenate([np.asarray(load_slice(conditioned[1], s).cell_types).astype(str) for s in model.train_slices])
    by_hand = [np.mean(training == t) for t in model.conditions.cell_types]
    assert model.conditions.cell_type_fractions == pytest.approx(by_hand)

    draws, uns, obs, unguided = guided_draws(model, known_batch(model, data, "joint"), data, "joint", 2, 5, 10, "ancestral",
                                             False, None, "test")
    drawn = obs["cell_type_drawn"]
    assert unguided is None and list(drawn) == model.conditions.draw_cell_types(len(data.cell_ids), 5)
    assert uns["joint_cell_types"]["cell_types"] == model.conditions.cell_types
    assert uns["joint_cell_types"]["guidance_scale"] == 3.0 and uns["joint_cell_types"]["guidance_interval"] == [0.2, 0.7]
    counts = np.array([np.sum(drawn == t) for t in model.conditions.cell_types])
    expected = len(drawn) * np.asarray(by_hand)
    assert counts.sum() == len(drawn) and np.all(np.abs(counts - expected) < 1)  # the composition itself, rounded
    other_seed = model.conditions.draw_cell_types(len(data.cell_ids), 6)
    assert sorted(other_seed) == sorted(drawn) and list(other_seed) != list(drawn)  # same counts, other cells
    conditional = draw_samples(model, apply_conditions(known_batch(model, data, "joint"), model.conditions, drawn, "cell_type", {},
                                                       "test"), "joint", 2, seed=5, steps=10, progress=False, guidance_scale=3.0,
                               guidance_interval=(0.2, 0.7))
    assert np.array_equal(draws.expression, conditional.expression)
    everywhere, uns, _, _ = guided_draws(model, known_batch(model, data, "joint"), data, "joint", 2, 5, 10, "ancestral", False,
                                         GuidanceRequest(scale=2.0), "test")
    guided = draw_samples(model, apply_conditions(known_batch(model, data, "joint"), model.conditions, drawn, "cell_type", {},
                                                  "test"), "joint", 2, seed=5, steps=10, progress=False, guidance_scale=2.0)
    assert uns["joint_cell_types"]["guidance_interval"] == [0.0, 1.0] and np.array_equal(everywhere.expression, guided.expression)
    assert not np.array_equal(everywhere.expression, draws.expression)

    plain, uns, obs, _ = guided_draws(model, known_batch(model, data, "joint"), data, "joint", 2, 5, 10, "ancestral", False,
                                      GuidanceRequest(joint_cell_types="none"), "test")
    unconditional = draw_samples(model, known_batch(model, data, "joint"), "joint", 2, seed=5, steps=10, progress=False)
    assert "cell_type_drawn" not in obs and "joint_cell_types" not in uns
    assert np.array_equal(plain.expression, unconditional.expression)
    classifier = _type_classifier(conditioned[1])
    agreement = {name: np.mean([np.mean(classifier.predict(d) == drawn) for d in x.expression])
                 for name, x in {"drawn": draws, "unconditional": plain}.items()}
    # a 300-step model learns types weakly (0.12 vs 0.08 here); the pipeline's model: README, issue notes
    assert agreement["drawn"] > 1.3 * agreement["unconditional"], agreement


def test_a_joint_sample_keeps_every_draw_and_evaluate_scores_each(conditioned, tmp_path):
    """Each joint draw is a tissue of its own: the file keeps all S (draw 0 is spatial_pred /
    expr_pred) and the metrics JSON gives each draw's figure beside their mean."""
    import json

    from alphastomics.io.sample_file import write_sample as write_h5ad_atomic
    from alphastomics.sample import sample_slice

    adata = sample_slice(conditioned[0], conditioned[1], HELD_OUT, "joint", steps=5, seed=5, num_samples=2, progress=False)
    path = tmp_path / f"{HELD_OUT}.joint.h5ad"
    write_h5ad_atomic(adata, path)
    adata = ad.read_h5ad(path)
    positions, expression = adata.obsm["spatial_pred_draws"], adata.obsm["expr_pred_draws"]
    assert positions.shape == (adata.n_obs, 2, 2) and expression.shape == (adata.n_obs, 2, adata.n_vars)
    assert np.array_equal(positions[:, 0], adata.obsm["spatial_pred"]) and np.array_equal(expression[:, 0], adata.layers["expr_pred"])
    assert not np.allclose(positions[:, 1], positions[:, 0]) and not np.allclose(expression[:, 1], expression[:, 0])
    from alphastomics.cli import main as cli_main

    assert cli_main(["evaluate", str(path), "--reference", str(conditioned[1]), "--out", str(tmp_path / "joint.tsv")]) == 0
    details = json.loads((tmp_path / "joint.json").read_text())
    composition = details["cell_type_composition_l1"]
    assert len(composition["per_draw"]) == 2
    table = pd.read_csv(tmp_path / "joint.tsv", sep="\t").query("method == 'alphastomics'").set_index("metric")["value"]
    assert table["cell_type_composition_l1"] == pytest.approx(np.mean(composition["per_draw"]))


def test_a_high_target_raises_the_gene_over_the_unguided_draw_with_the_same_seed(conditioned, tmp_path):
    out = tmp_path / "designed.h5ad"
    result = _cli("sample", "--checkpoint", conditioned[0], "--data", conditioned[1], "--slice", HELD_OUT, "--mode", "pos_to_expr",
                  "--target", "Pcp4:high", "--target-scale", "0.5", "--num-samples", "1", "--steps", "10", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    designed = ad.read_h5ad(out)
    target = designed.uns["alphastomics"]["target"]
    pcp4 = list(designed.var_names).index("Pcp4")
    sd = designed.X[:, pcp4].std()
    assert designed.layers["expr_pred"][:, pcp4].mean() > float(target["unguided_mean"][0]) + sd
    # the objective (distance to the target) falls for most cells
    assert np.mean(designed.obs["target_objective"] < designed.obs["target_objective_unguided"]) > 0.8
    # scored beside the unguided draw of the same seed
    table = tmp_path / "designed.tsv"
    result = _cli("evaluate", out, "--reference", conditioned[1], "--out", table)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = pd.read_csv(table, sep="\t").query("method == 'alphastomics'").set_index("metric")["value"]
    assert metrics["target_fraction_met"] > metrics["target_fraction_met_unguided"]
    assert metrics["target_objective_mean"] < metrics["target_objective_mean_unguided"]
    assert np.isfinite(metrics[["target_energy_other_genes", "target_energy_other_genes_unguided"]]).all()


def test_a_target_limited_to_a_region_raises_the_gene_there_only(conditioned, tmp_path):
    """--target-region: the cells in the box (the slice's own units, open bounds) are the targeted
    ones, and the gene rises there, not elsewhere, over the unguided draw of the same seed."""
    data = load_slice(conditioned[1], HELD_OUT)
    x_middle = float(np.median(data.coords[:, 0]))
    out = tmp_path / "region.h5ad"
    result = _cli("sample", "--checkpoint", conditioned[0], "--data", conditioned[1], "--slice", HELD_OUT, "--mode", "pos_to_expr",
                  "--target", "Pcp4:high", "--target-scale", "0.5", "--target-region", f":{x_middle}", "--num-samples", "1",
                  "--steps", "10", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    designed = ad.read_h5ad(out)
    inside = designed.obsm["spatial"][:, 0] <= x_middle
    assert np.array_equal(designed.obs["targeted"].to_numpy(bool), inside) and 0.4 < inside.mean() < 0.6
    assert designed.uns["alphastomics"]["target"]["region"] == f":{x_middle}"
    pcp4 = list(designed.var_names).index("Pcp4")
    rise = designed.layers["expr_pred"][:, pcp4] - designed.layers["expr_pred_unguided"][:, pcp4]
    sd = designed.X[:, pcp4].std()
    assert rise[inside].mean() > sd and abs(rise[~inside].mean()) < 0.25 * rise[inside].mean()


def test_guidance_errors_name_the_problem(conditioned, small_models, tmp_path):
    model = load_model(conditioned[0])
    data = load_slice(conditioned[1], HELD_OUT)
    with pytest.raises(InputError, match="unknown type"):
        apply_conditions(known_batch(model, data, "joint"), model.conditions, data.cell_types, "cell_type=Neuron", {}, "test")
    with pytest.raises(InputError, match="no covariate 'treatment'"):
        apply_conditions(known_batch(model, data, "joint"), model.conditions, None, None, {"treatment": "drug"}, "test")
    with pytest.raises(InputError, match="not one the model knows"):
        parse_target("NotAGene:high", model.genes, model.codec)
    with pytest.raises(InputError, match="high, low or a number"):
        parse_target("Pcp4:loud", model.genes, model.codec)
    coords = data.coords[:, : data.n_dims]
    for region, message in [("0:1,2:3,4:5", "3 axes for 2-D"), ("5:1", "low <= high"), ("a:b", "with numbers"),
                            ("100000:", "no cell lies in it"), ("10", "expected X0:X1")]:
        with pytest.raises(InputError, match=message):
            parse_target("Pcp4:high", model.genes, model.codec, data.cell_ids, None, coords, region)
    with pytest.raises(InputError, match="needs the slice's coordinates"):
        parse_target("Pcp4:high", model.genes, model.codec, data.cell_ids, None, None, ":0")
    unconditioned = small_models["starmap"][0]
    result = _cli("sample", "--checkpoint", unconditioned, "--data", conditioned[1], "--slice", HELD_OUT, "--mode", "pos_to_expr",
                  "--condition", "cell_type", "--out", tmp_path / "x.h5ad")
    assert result.returncode != 0 and "trained without conditions" in result.stderr and not (tmp_path / "x.h5ad").exists()
    result = _cli("sample", "--checkpoint", conditioned[0], "--data", conditioned[1], "--slice", HELD_OUT, "--mode", "expr_to_pos",
                  "--target", "Pcp4:high", "--out", tmp_path / "y.h5ad")
    assert result.returncode != 0 and "generates none" in result.stderr


def test_target_levels_come_from_the_training_data(conditioned, tmp_path):
    model = load_model(conditioned[0])
    tsv = tmp_path / "target.tsv"
    tsv.write_text("gene\ttarget\tweight\nPcp4\thigh\t2\nSlc17a7\tlow\t1\nGad1\t1.5\t\n")
    target = parse_target(str(tsv), model.genes, model.codec)
    i = model.genes.index("Pcp4")
    assert target.values[0] == pytest.approx(model.codec.mean[i] + 1.5 * model.codec.std[i])
    assert target.values[1] == pytest.approx(model.codec.floor[model.genes.index("Slc17a7")])
    assert target.values[2] == pytest.approx(1.5) and list(target.weights) == [2.0, 1.0, 1.0]


def test_condition_dropout_drops_whole_examples_and_single_cells(conditioned):
    from alphastomics.diffusion.objective import DiffusionObjective

    model = load_model(conditioned[0])
    objective = DiffusionObjective(model.config, model.codec, model.frame)
    batch = known_batch(model, load_slice(conditioned[1], HELD_OUT), "joint").repeat(400)
    batch.cell_labels = torch.ones_like(batch.cell_labels)
    labels, _ = objective.dropped_conditions(batch, torch.Generator().manual_seed(0))
    p = model.config.training.condition_dropout
    dropped_examples = (labels == 0).all(1).float().mean().item()
    dropped_cells = (labels == 0).float().mean().item()
    assert abs(dropped_examples - p) < 0.05 and abs(dropped_cells - (1 - (1 - p) ** 2)) < 0.03


def test_denoise_keeps_measured_values_and_fills_the_zeros_dropout_made(conditioned, tmp_path):
    """Dropout only turns values into 0: measured non-zeros stay exactly; with half the non-zeros
    dropped the estimated dropout rate is about one half and zeros are filled, while the undropped
    slice keeps every zero of a gene it lost nothing of; the same seed gives the same result.
    (How much it recovers: benchmarks/conditions.py.)"""
    real = ad.read_h5ad(STARMAP[2])[:400].copy()
    clean = np.asarray(real.X.toarray() if hasattr(real.X, "toarray") else real.X, dtype=np.float32)
    real.X = planted.drop_half_of_nonzeros(clean, 0)
    path = tmp_path / "slice.h5ad"
    real.write_h5ad(path)
    out = tmp_path / "denoised.h5ad"
    result = _cli("denoise", "--checkpoint", conditioned[0], "--data", path, "--time", "0.3", "--num-samples", "2", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    denoised = ad.read_h5ad(out)
    measured = np.asarray(denoised.X)
    cleaned = denoised.layers["denoised"]
    assert denoised.shape == (400, 166) and np.isfinite(cleaned).all() and (cleaned >= 0).all()
    assert np.array_equal(cleaned[measured > 0], measured[measured > 0])
    assert abs(float(np.median(denoised.var["dropout_rate"])) - 0.5) < 0.1
    assert (cleaned[measured == 0] > 0).mean() > 0.05  # zeros are filled where the context says so
    model = load_model(conditioned[0])
    slice_data = load_slice(conditioned[1], HELD_OUT)
    again, rate = denoise_slice(model, slice_data, 0.3, 2, seed=0)
    assert np.array_equal(again, denoise_slice(model, slice_data, 0.3, 2, seed=0)[0])  # seeded
    kept = (rate == 0) & slice_data.gene_mask.astype(bool)
    assert kept.mean() > 0.4  # an undropped slice: most genes have no more zeros than the training slices
    assert np.array_equal(again[:, kept], slice_data.expression[:, kept])
    result = _cli("denoise", "--checkpoint", conditioned[0], "--data", path, "--time", "1.5", "--out", tmp_path / "bad.h5ad")
    assert result.returncode != 0 and "--time must be in (0, 1]" in result.stderr and not (tmp_path / "bad.h5ad").exists()


def test_the_dropout_rate_and_the_chance_a_zero_was_expressed_match_a_simulated_dropout():
    """The estimate of alphastomics.denoise against dropout simulated cell by cell: a gene expressed
    in 40% of cells on the platform, 30% of its values dropped."""
    from alphastomics.denoise import dropout_rate, expressed_given_zero

    rng = np.random.default_rng(0)
    expressed = rng.random((200_000, 3)) < np.array([0.4, 0.4, 1.0])
    lost = rng.random(expressed.shape) < np.array([0.3, 0.0, 0.3])
    observed = np.where(expressed & ~lost, 1.0, 0.0)
    rate = dropout_rate(observed, np.array([True, True, False]), np.array([0.6, 0.6, 0.0]))
    assert rate[0] == pytest.approx(0.3, abs=0.01) and rate[1] == pytest.approx(0.0, abs=0.01) and rate[2] == 0.0
    zero = observed[:, 0] == 0
    simulated = expressed[zero, 0].mean()  # of the measured zeros, the share that was expressed
    assert expressed_given_zero(np.array([0.4]), np.array([0.3]))[0] == pytest.approx(simulated, abs=0.01)
    assert expressed_given_zero(np.array([1.0, 0.5]), np.array([0.0, 0.0])).tolist() == [0.0, 0.0]  # nothing lost: zeros are zeros
    assert expressed_given_zero(np.array([1.0]), np.array([0.3]))[0] == 1.0  # never zero on the platform: every zero was lost
    assert dropout_rate(observed, np.ones(3, bool), None).tolist() == [1.0, 1.0, 1.0]  # older checkpoints: fill every zero


def test_each_cells_chance_of_expression_is_matched_to_the_nonzeros_it_kept():
    """Cells that differ in how many genes they express (depth), half of their non-zeros dropped, and
    a model that reads every cell at face value (the gene's base rate): matched to the non-zeros each
    cell kept, P(expressed | measured 0) follows the simulated share of expressed genes among each
    depth group's zeros; without the match it does not. Genes outside ``adjustable`` are left alone."""
    from alphastomics.denoise import expressed_given_zero, match_kept_nonzeros

    rng = np.random.default_rng(0)
    depth, base = rng.normal(0, 1, (3000, 1)), rng.normal(-0.5, 1, (1, 150))
    expressed = rng.random((3000, 150)) < 1 / (1 + np.exp(-(depth + base)))
    observed = expressed & (rng.random(expressed.shape) >= 0.5)
    rate = np.full(150, 0.5)
    face_value = np.broadcast_to(1 / (1 + np.exp(-base)), expressed.shape).astype(np.float32)
    adjustable = np.ones(150, bool)
    adjustable[:10] = False
    matched = match_kept_nonzeros(face_value, rate, observed, adjustable)
    assert np.array_equal(matched[:, :10], face_value[:, :10])
    group = np.digitize(depth[:, 0], np.quantile(depth[:, 0], [0.2, 0.4, 0.6, 0.8]))
    for probability, tolerance in [(matched, 0.03), (face_value, None)]:
        errors = []
        for g in range(5):
            zeros = ~observed[group == g][:, 10:]
            simulated = expressed[group == g][:, 10:][zeros].mean()
            estimated = expressed_given_zero(probability[group == g][:, 10:], rate[None, 10:])[zeros].mean()
            errors.append(abs(estimated - simulated))
        if tolerance is not None:
            assert max(errors) < tolerance
        else:
            assert max(errors) > 0.1  # read at face value, the deepest and shallowest cells are far off
    true_model = (1 / (1 + np.exp(-(depth + base)))).astype(np.float32)  # a model that already knows each cell's depth
    rematched = match_kept_nonzeros(true_model, rate, observed, adjustable)
    assert abs(float((rematched - true_model).mean())) < 0.01  # unbiased: only each cell's counting noise is added
    assert np.corrcoef(rematched.ravel(), true_model.ravel())[0, 1] > 0.95
    none_kept = match_kept_nonzeros(face_value[:1], rate, np.zeros((1, 150), bool), adjustable)
    assert none_kept[0, 10:].max() < 1e-6  # a cell that kept nothing expresses nothing of what it could have kept


def test_a_slice_condition_is_drawn_against_the_slice_as_measured_and_scored_and_drawn_in_the_report(conditioned, tmp_path):
    """BZ14 (control) drawn under condition=treated: the baseline is the same seeds under the
    slice's own condition (not unconditional), the posterior means of both are kept, the shift
    metrics match a computation by hand, and the report draws predicted beside observed shifts.
    (Whether a trained model predicts the planted shift: benchmarks/conditions.py; this model's
    300 steps are too few to learn it.)"""
    model = load_model(conditioned[0])
    assert model.conditions.covariates == {"condition": ["control", "treated"]}
    out = tmp_path / "treated.h5ad"
    result = _cli("sample", "--checkpoint", conditioned[0], "--data", conditioned[1], "--slice", HELD_OUT, "--mode", "pos_to_expr",
                  "--slice-condition", "condition=treated", "--num-samples", "1", "--posterior-mean-draws", "4", "--steps", "5",
                  "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    drawn = ad.read_h5ad(out)
    conditions = drawn.uns["alphastomics"]["conditions"]
    assert dict(conditions["slice_conditions"]) == {"condition": "treated"}
    assert dict(conditions["baseline_slice_conditions"]) == {"condition": "control"}
    # the baseline's posterior mean is that of the slice under its own condition, same noises
    data = load_slice(conditioned[1], HELD_OUT)
    as_measured = apply_conditions(known_batch(model, data, "pos_to_expr"), model.conditions, data.cell_types, None,
                                   {"condition": "control"}, "test")
    expected = expected_expression(model, as_measured, [0, 1, 2, 3], chunk=2)[: len(data.cell_ids)] * model.expression_calibration
    np.testing.assert_allclose(drawn.layers["expr_pred_mean_unguided"], expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(drawn.layers["expr_pred_mean"], drawn.layers["expr_pred_mean_unguided"])

    from alphastomics.evaluate import evaluate_sample, write_metrics
    from alphastomics.report.render import render_report

    table, details = evaluate_sample(drawn, model.config.evaluation, source=str(out), reference_dir=conditioned[1])
    table_path = write_metrics(table, details, tmp_path / "treated.tsv")[0]
    metrics = table.query("method == 'alphastomics'").set_index("metric")["value"]
    predicted = drawn.layers["expr_pred_mean"].mean(0) - drawn.layers["expr_pred_mean_unguided"].mean(0)
    controls = np.concatenate([np.asarray(drawn.X), *[load_slice(conditioned[1], s).expression for s in TRAINING]])
    observed = load_slice(conditioned[1], TREATED).expression.mean(0) - controls.mean(0)
    assert metrics["perturbation_shift_pearson"] == pytest.approx(np.corrcoef(predicted, observed)[0, 1], abs=1e-4)
    assert metrics["perturbation_shift_slope"] == pytest.approx(predicted @ observed / (observed @ observed), rel=1e-3, abs=1e-6)
    sds = np.concatenate([load_slice(conditioned[1], TREATED).expression, controls]).std(0)
    shifted = np.abs(observed) > 0.25 * sds
    genes = list(drawn.var_names)
    assert (observed[[genes.index(g) for g in UP_GENES]] > 0).all() and (observed[[genes.index(g) for g in DOWN_GENES]] < 0).all()
    assert metrics["perturbation_shifted_genes"] == shifted.sum()
    assert metrics["perturbation_sign_agreement"] == pytest.approx(np.mean(np.sign(predicted[shifted]) == np.sign(observed[shifted])))

    html = render_report(conditioned[1] / "manifest.json", [table_path], [out])
    assert 'id="perturbation"' in html and f"{HELD_OUT} · pos_to_expr · alphastomics under condition=treated" in html
    assert f"observed from {TREATED} minus {HELD_OUT}" in html


def test_the_test_command_draws_each_held_out_slice_under_the_other_condition(conditioned, tmp_path):
    """``alphastomics test`` on a checkpoint conditioned on a slice covariate: BZ14 (control) is also
    drawn under condition=treated; the report shows it in its Perturbation section, and neither
    the metric table nor the reconstruction figures count it as a sample of BZ14."""
    out = tmp_path / "test"
    result = _cli("test", "--checkpoint", conditioned[0], "--data", conditioned[1], "--modes", "pos_to_expr", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    perturbed = [p for p in (out / "samples").glob("*.h5ad") if "condition" in p.name]
    assert len(perturbed) == 1 and perturbed[0].name.startswith(f"{HELD_OUT}.pos_to_expr.condition_treated-")
    drawn = ad.read_h5ad(perturbed[0])
    assert dict(drawn.uns["alphastomics"]["conditions"]["slice_conditions"]) == {"condition": "treated"}
    assert (out / "metrics" / perturbed[0].name.replace(".h5ad", ".tsv")).is_file()
    table = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert not table.duplicated(["slice", "mode", "method", "metric"]).any()
    assert not table["metric"].str.startswith("perturbation_").any()
    html = (out / "report.html").read_text()
    assert 'id="perturbation"' in html and "under condition=treated" in html
