"""Training on real preprocessed slices: losses, masked diffusion, data modes, checkpoints and
resume, NaN detection, DDP on CPU, DeepSpeed configuration, export and sampling."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import torch
import yaml

from alphastomics.config import Config, apply_overrides, load_config
from alphastomics.data.batch import SliceBatch
from alphastomics.data.expression import ExpressionCodec
from alphastomics.data.frames import CoordinateFrame
from alphastomics.data.slices import PatchDataset, collate, make_example
from alphastomics.errors import AlphaSTomicsError
from alphastomics.io.shards import load_slice
from alphastomics.model.network import Prediction
from alphastomics.diffusion.objective import masked_reconstruction_loss
from alphastomics.train import DiffusionModule, build_strategy, train

SMALL = {
    "model": {"hidden_dim": 32, "num_layers": 2, "num_heads": 4},
    "diffusion": {"diffusion_steps": 20},
    "training": {"epochs": 2, "examples_per_epoch": 2, "val_every_n_epochs": 1, "accelerator": "cpu"},
}


def small_config(tmp_path: Path, **training) -> Path:
    settings = json.loads(json.dumps(SMALL))
    settings["training"].update(training)
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _cli(*args, timeout=600, **kwargs):
    return subprocess.run([sys.executable, "-m", "alphastomics.cli", *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def test_train_export_and_sample_every_mode(starmap_dir, tmp_path):
    config = load_config(small_config(tmp_path))
    out = tmp_path / "model"
    summary = train(config, starmap_dir, out, test_ids=["20180424_BZ14_control"], export_to=out / "model.ckpt")
    assert summary["train_slices"] == ["20180417_BZ5_control", "20180419_BZ9_control"]
    assert summary["global_step"] == 4
    assert (out / "config.yaml").exists() and (out / "logs/metrics.csv").exists()
    assert any((out / "logs/tensorboard").iterdir())
    for mode in ("expr_to_pos", "pos_to_expr", "joint"):
        target = tmp_path / f"{mode}.h5ad"
        result = _cli("sample", "--checkpoint", str(out / "model.ckpt"), "--data", str(starmap_dir),
                      "--slice", "20180424_BZ14_control", "--mode", mode, "--out", str(target))
        assert result.returncode == 0, result.stderr
        adata = ad.read_h5ad(target)
        assert adata.n_obs == 1088 and adata.obsm["spatial_pred"].shape == (1088, 2)
        assert adata.obsm["alphastomics_embedding"].shape == (1088, 32)
        assert np.isfinite(adata.obsm["alphastomics_embedding"]).all()
        assert np.isfinite(adata.layers["expr_pred"]).all() and np.isfinite(adata.obsm["spatial_pred"]).all()
        generated_position = mode != "pos_to_expr"
        assert np.allclose(adata.obsm["spatial_pred"], adata.obsm["spatial"]) != generated_position
        assert np.allclose(adata.layers["expr_pred"], adata.X) == (mode == "expr_to_pos")
        if mode == "pos_to_expr":
            result = _cli("evaluate", str(target), "--out", str(tmp_path / "metrics.tsv"))
            assert result.returncode == 0, result.stderr
            table = (tmp_path / "metrics.tsv").read_text()
            assert "embedding_leiden_ari" in table and "expr_mse" in table
    # the model file records its training slices, and sampling or scoring one of them warns
    from alphastomics.checkpoint import load_model

    assert load_model(out / "model.ckpt").train_slices == ["20180417_BZ5_control", "20180419_BZ9_control"]
    seen = tmp_path / "seen.h5ad"
    result = _cli("sample", "--checkpoint", str(out / "model.ckpt"), "--data", str(starmap_dir), "--slice", "20180417_BZ5_control",
                  "--mode", "pos_to_expr", "--num-samples", "2", "--out", str(seen))
    assert result.returncode == 0 and "training slices" in result.stderr
    assert ad.read_h5ad(seen).uns["alphastomics"]["trained_on_slice"]
    result = _cli("evaluate", str(seen), "--out", str(tmp_path / "seen.tsv"))
    assert result.returncode == 0 and "training slices" in result.stderr


def test_a_slice_cannot_be_both_test_and_validation(starmap_dir, tmp_path):
    config = load_config(small_config(tmp_path))
    with pytest.raises(AlphaSTomicsError, match="both test and validation: 20180424_BZ14_control"):
        train(config, starmap_dir, tmp_path / "model", test_ids=["20180424_BZ14_control"], val_ids=["20180424_BZ14_control"])
    assert not (tmp_path / "model" / "checkpoints").exists()


def test_sample_refuses_unknown_slice_and_bad_checkpoint(starmap_dir, tmp_path):
    bogus = tmp_path / "model.ckpt"
    bogus.write_text("not a checkpoint")
    result = _cli("sample", "--checkpoint", str(bogus), "--data", str(starmap_dir), "--slice", "x", "--mode", "joint",
                  "--out", str(tmp_path / "o.h5ad"))
    assert result.returncode != 0 and "model.ckpt" in result.stderr
    assert not (tmp_path / "o.h5ad").exists()
    result = _cli("sample", "--checkpoint", str(bogus), "--data", str(starmap_dir), "--slice", "x", "--mode", "joint",
                  "--expression-temperature", "0", "--out", str(tmp_path / "o.h5ad"))
    assert result.returncode != 0 and "--expression-temperature" in result.stderr
    assert not (tmp_path / "o.h5ad").exists()


def _module_and_batch(data_dir, slices, frame_kind="per_slice", **changes):
    config = apply_overrides(Config(), {"model.hidden_dim": 32, "model.num_layers": 2, **changes})
    loaded = [load_slice(data_dir, s) for s in slices]
    codec = ExpressionCodec.fit([s.expression for s in loaded], [s.gene_mask for s in loaded])
    frame = CoordinateFrame.fit(frame_kind, [(s.coords, s.n_dims) for s in loaded])
    batch = collate([make_example(s, codec, frame) for s in loaded])
    return DiffusionModule(config.to_dict(), loaded[0].genes, codec.to_dict(), frame.to_dict(), list(slices)), batch


def test_batches_pad_slices_of_different_size_and_losses_are_finite(bdtnp_dir):
    module, batch = _module_and_batch(bdtnp_dir, ["slab0", "slab1"])
    assert batch.node_mask.sum(1).tolist() == [760, 759]
    assert batch.dim_mask.tolist() == [[1, 1, 1], [1, 1, 1]]
    losses = module.compute_losses(batch, torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert module.network.blocks[0].attention.qkv.weight.grad.abs().sum() > 0


def test_a_module_cast_to_bf16_as_deepspeed_does_trains_and_keeps_its_average_in_fp32(starmap_dir):
    """DeepSpeed's bf16 casts every weight but not the batch nor the noise drawn in fp32; on an H200
    the first step failed (mat1 and mat2 must have the same dtype). The moving average goes back to
    fp32 at fit start: in bf16 it could not move."""
    import copy

    fp32, batch = _module_and_batch(starmap_dir, ["20180417_BZ5_control"], **{"model.local_neighbours": 4})
    module = copy.deepcopy(fp32).to(torch.bfloat16)
    assert module.ema_network.radius_in.weight.dtype == torch.bfloat16
    module.on_fit_start()
    assert {p.dtype for p in module.ema_network.parameters()} == {torch.float32}
    assert module.network.radius_in.weight.dtype == torch.bfloat16
    for seed in (0, 1, 2):  # noise and regimes drawn from the seed: both modalities, then one
        losses = module.compute_losses(batch, torch.Generator().manual_seed(seed))
        reference = fp32.compute_losses(batch, torch.Generator().manual_seed(seed))
        assert losses.keys() == reference.keys()
        for name in losses:
            assert losses[name].item() == pytest.approx(reference[name].item(), rel=0.03), (seed, name)
        module.zero_grad()
        fp32.zero_grad()
        losses["loss"].backward()
        reference["loss"].backward()
        learning = {n for n, p in fp32.network.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        assert learning and learning == {n for n, p in module.network.named_parameters()
                                         if p.grad is not None and p.grad.abs().sum() > 0}
    before = [p.clone() for p in module.ema_network.parameters()]
    with torch.no_grad():
        for p in module.network.parameters():
            p.add_(0.01)
    module.on_train_batch_end(None, batch, 0)
    assert all(not torch.equal(b, a) for b, a in zip(before, module.ema_network.parameters()))
    # the fp32 average scores batches like the network it follows
    ema = module.compute_losses(batch, torch.Generator().manual_seed(0), network=module.ema_network)
    assert all(torch.isfinite(v) for v in ema.values())


def _drawn(module, batch, generator):
    """(step of expression, of positions, weight of expression, of positions) of one noised batch."""
    noised = module.objective.draw(batch, generator)
    return noised.state.t_expression, noised.state.t_position, noised.expression_weight, noised.position_weight


def test_training_modes_noise_the_right_modality(starmap_dir):
    module, batch = _module_and_batch(starmap_dir, ["20180417_BZ5_control"], **{"training.training_mode": "expr_to_pos"})
    t_e, t_p, w_e, w_p = _drawn(module, batch, torch.Generator().manual_seed(0))
    assert t_e.tolist() == [0] and t_p.item() > 0 and w_e.tolist() == [0.0] and w_p.tolist() == [1.0]
    module, batch = _module_and_batch(starmap_dir, ["20180417_BZ5_control"], **{"training.training_mode": "pos_to_expr"})
    t_e, t_p, w_e, w_p = _drawn(module, batch, torch.Generator().manual_seed(0))
    assert t_p.tolist() == [0] and t_e.item() > 0 and w_p.tolist() == [0.0]
    # joint: all three regimes occur
    module, batch = _module_and_batch(starmap_dir, ["20180417_BZ5_control"])
    seen = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(30):
        t_e, t_p, _, _ = _drawn(module, batch, g)
        seen.add((t_e.item() > 0, t_p.item() > 0))
    assert seen == {(True, True), (True, False), (False, True)}


def test_masked_reconstruction_counts_masked_entries_only():
    B, N, G = 1, 4, 3
    target = SliceBatch(torch.zeros(B, N, G), torch.ones(B, N, G), torch.zeros(B, N, 3), torch.ones(B, N, dtype=torch.bool),
                        torch.ones(B, G), torch.ones(B, 3))
    pred_e = torch.full((B, N, G), 100.0)  # large error everywhere...
    pred_e[0, 0, 1] = 2.0  # ...except the masked entries, which have error 2 and 3
    pred_e[0, 2, 0] = 3.0
    pred_p = torch.full((B, N, 3), 50.0)
    pred_p[0, 1, 2] = 1.0
    mask_e = torch.zeros(B, N, G, dtype=torch.bool)
    mask_e[0, 0, 1] = mask_e[0, 2, 0] = True
    mask_p = torch.zeros(B, N, 3, dtype=torch.bool)
    mask_p[0, 1, 2] = True
    loss = masked_reconstruction_loss(Prediction(pred_e, pred_p, torch.zeros(())), target, target.positions, mask_e, mask_p)
    assert float(loss) == pytest.approx((4 + 9 + 1) / 3)


def test_feature_masks_replace_inputs_with_learned_values(starmap_dir):
    module, batch = _module_and_batch(starmap_dir, ["20180417_BZ5_control"], **{"masking.enable": True,
                                      "masking.expression_mask_ratio": 0.3, "masking.position_mask_ratio": 0.3})
    mask_e, mask_p = module.objective.feature_masks(batch, torch.Generator().manual_seed(0))
    assert 0.25 < mask_e.float().mean() < 0.35
    assert not mask_p[..., 2].any()  # 2D slice: the unused z axis is never masked
    with torch.no_grad():
        module.objective.expression_mask_value.fill_(7.5)
    seen = {}

    def record_input(module_, inputs, output):
        seen.setdefault("x", inputs[0])

    module.network.expression_in.register_forward_hook(record_input)
    losses = module.compute_losses(batch, torch.Generator().manual_seed(0), masking=True)
    assert "masked_reconstruction" in losses and torch.isfinite(losses["masked_reconstruction"])
    x = seen["x"]
    masked_fraction = (x == 7.5).float().mean()
    assert 0.25 < masked_fraction < 0.35
    # both channels of a masked gene (magnitude and presence) are masked together
    G = batch.gene_mask.shape[1]
    zero_inflated = torch.from_numpy(module.codec.zero_inflated)
    assert zero_inflated.any() and torch.equal(x[..., :G][..., zero_inflated] == 7.5, x[..., G:] == 7.5)


def test_cell_mode_patches_are_spatially_contiguous(starmap_dir):
    s = load_slice(starmap_dir, "20180417_BZ5_control")
    codec = ExpressionCodec.fit([s.expression], [s.gene_mask])
    frame = CoordinateFrame.fit("per_slice", [(s.coords, s.n_dims)])
    patches = PatchDataset([s], codec, frame, cells_per_example=100, length=5, seed=0)
    example = patches[3]
    assert example.n_cells == 100
    # A patch of n cells is scaled like a slice of n cells at the training density: per-axis spread ~1.
    assert 0.5 < np.sqrt((example.positions[:, :2] ** 2).mean()) < 2.0
    # The patch is exactly the 100 nearest cells of one cell of the slice: find that cell by
    # matching the patch's expression channels back to the slice.
    full, _ = codec.encode(s.expression, s.gene_mask)
    rows = [int(np.argmin(np.abs(full - row).sum(1))) for row in example.expression]
    patch_cells = set(rows)
    assert len(patch_cells) == 100
    centres = [c for c in patch_cells if set(patches.trees[0].query(s.coords[c, :2], k=100)[1]) == patch_cells]
    assert centres, "the patch is not the k-nearest-neighbour set of any of its cells"
    # and it is local: its extent is a small part of the slice's
    extent = np.ptp(s.coords[rows, :2], axis=0).max()
    assert extent < 0.5 * np.ptp(s.coords[:, :2], axis=0).max()


def test_nan_loss_stops_training_naming_the_step(starmap_dir, tmp_path):
    import lightning as L

    class PoisonWeights(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 3:
                with torch.no_grad():
                    pl_module.network.expression_out[0].weight.fill_(float("nan"))

    from alphastomics import train as train_module

    config = load_config(small_config(tmp_path, epochs=5))
    original = train_module.build_trainer
    train_module.build_trainer = lambda *a, **k: original(*a, extra_callbacks=[PoisonWeights()], **k)
    try:
        with pytest.raises(AlphaSTomicsError, match="not finite at step 3"):
            train(config, starmap_dir, tmp_path / "model", test_ids=["20180424_BZ14_control"])
    finally:
        train_module.build_trainer = original


def test_killed_training_resumes_from_last_checkpoint(starmap_dir, tmp_path):
    # validation every 10 epochs and no validation slice, as in the bundled config: checkpoints still follow every epoch
    settings = small_config(tmp_path, epochs=12, examples_per_epoch=2, val_every_n_epochs=10)
    out = tmp_path / "model"
    args = ["train", "--data", str(starmap_dir), "--config", str(settings), "--test-slices", "20180424_BZ14_control",
            "--out", str(out), "--resume", "--no-export"]
    process = subprocess.Popen([sys.executable, "-m", "alphastomics.cli", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "checkpoints/last.ckpt"
    deadline = time.time() + 300
    step_at_kill = 0
    while time.time() < deadline and process.poll() is None:
        if last.exists():
            try:
                step_at_kill = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
            except Exception:  # being written
                step_at_kill = 0
            if step_at_kill >= 4:
                break
        time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 4 <= step_at_kill < 24, "training finished before it could be killed"
    assert not (out / "training.json").exists()
    step_at_kill = torch.load(last, map_location="cpu", weights_only=False)["global_step"]

    result = _cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "training.json").read_text())
    assert summary["resumed_from"].endswith("last.ckpt")
    # no validation slice: the last weights are the model, not the epoch of the lowest training loss
    assert summary["best_checkpoint"] == "checkpoints/last.ckpt" and summary["monitor"] is None
    assert summary["start_step"] == step_at_kill  # continued, not restarted from 0
    assert summary["global_step"] == 24
    # the training curves keep the steps logged before the kill (Lightning's CSV logger alone
    # rewrote metrics.csv with the resumed part only)
    import pandas as pd

    steps = pd.read_csv(out / "logs/metrics.csv")["step"].dropna()
    assert steps.min() < step_at_kill and steps.max() >= 20 and steps.is_monotonic_increasing
    assert not (out / "logs/metrics.before_resume.csv").exists()


def test_resume_ignores_checkpoint_of_other_settings(starmap_dir, tmp_path):
    out = tmp_path / "model"
    config = load_config(small_config(tmp_path))
    train(config, starmap_dir, out, test_ids=["20180424_BZ14_control"])
    changed = apply_overrides(config, {"model.num_layers": 3})
    summary = train(changed, starmap_dir, out, test_ids=["20180424_BZ14_control"], resume=True)
    assert summary["resumed_from"] is None and summary["start_step"] == 0


def test_a_run_killed_before_its_first_checkpoint_does_not_resume_the_old_one(starmap_dir, tmp_path, monkeypatch):
    """Settings A trained to the end; settings B started and killed before it saved anything; B with
    --resume starts from scratch, not from A's weights under B's key."""
    import lightning

    out = tmp_path / "model"
    config = load_config(small_config(tmp_path))
    train(config, starmap_dir, out, test_ids=["20180424_BZ14_control"])
    changed = apply_overrides(config, {"model.num_layers": 3})

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(lightning.pytorch.Trainer, "fit", killed)
        with pytest.raises(KeyboardInterrupt):
            train(changed, starmap_dir, out, test_ids=["20180424_BZ14_control"], resume=True)
    assert not (out / "checkpoints/last.ckpt").exists()
    summary = train(changed, starmap_dir, out, test_ids=["20180424_BZ14_control"], resume=True)
    assert summary["resumed_from"] is None and summary["start_step"] == 0 and summary["global_step"] > 0


@pytest.mark.slow
def test_ddp_two_processes_on_cpu_see_different_slices(starmap_dir, tmp_path):
    settings = small_config(tmp_path, epochs=2, examples_per_epoch=2)
    out = tmp_path / "model"
    env = dict(os.environ, MASTER_PORT=str(29500 + os.getpid() % 1000))
    result = _cli("train", "--data", str(starmap_dir), "--config", str(settings), "--test-slices", "20180424_BZ14_control",
                  "--out", str(out), "--strategy", "ddp", "--devices", "2", "--accelerator", "cpu", "--no-export", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "training.json").read_text())
    assert summary["world_size"] == 2
    seen = [json.loads((out / f"logs/slices_seen_rank{r}.json").read_text()) for r in (0, 1)]
    assert all(seen) and set(seen[0]).isdisjoint(seen[1])


def test_deepspeed_strategy_built_from_config():
    pytest.importorskip("deepspeed")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    for stage in (1, 2, 3):
        config = apply_overrides(Config(), {"training.strategy": f"deepspeed_stage_{stage}", "training.precision": "bf16-mixed"})
        strategy = build_strategy(config)
        assert isinstance(strategy, DeepSpeedStrategy)
        assert strategy.config["zero_optimization"]["stage"] == stage


def test_wandb_logging_is_optional_and_works_offline(starmap_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    plain = train(load_config(small_config(tmp_path)), starmap_dir, tmp_path / "plain", test_ids=["20180424_BZ14_control"])
    assert plain["global_step"] == 4 and not (tmp_path / "plain/wandb").exists()  # off by default
    config = apply_overrides(load_config(small_config(tmp_path)), {"training.wandb": True})
    train(config, starmap_dir, tmp_path / "logged", test_ids=["20180424_BZ14_control"])
    runs = list((tmp_path / "logged/wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_ddp_and_fsdp_strategies_built_from_config():
    """Lightning runs FSDP on GPUs only; on CPU we check the strategy the config builds."""
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    assert isinstance(build_strategy(apply_overrides(Config(), {"training.strategy": "fsdp"})), FSDPStrategy)
    ddp = build_strategy(apply_overrides(Config(), {"training.strategy": "auto", "training.devices": 2}))
    assert isinstance(ddp, DDPStrategy) and ddp._ddp_kwargs.get("find_unused_parameters") is True
    assert build_strategy(Config()) == "auto"


@pytest.mark.parametrize("dataset", ["starmap", "bdtnp"])
@pytest.mark.parametrize("mode", ["expr_to_pos", "pos_to_expr"])
def test_hidden_truth_does_not_reach_the_sample(small_models, mode, dataset):
    """Leakage: changing what a mode must generate (coordinates in expr_to_pos, expression in
    pos_to_expr) leaves the sample bitwise unchanged for the same seed, in a per-slice frame and in
    a shared one; changing what it is given changes it."""
    import dataclasses

    from alphastomics.checkpoint import load_model
    from alphastomics.draws import draw_samples, known_batch

    checkpoint, data_dir, slice_id = small_models[dataset]
    model = load_model(checkpoint)
    assert model.frame.kind == ("shared" if dataset == "bdtnp" else "per_slice")
    data = load_slice(data_dir, slice_id)
    rng = np.random.default_rng(0)
    hidden, given = ("coords", "expression") if mode == "expr_to_pos" else ("expression", "coords")

    def perturbed(field):
        value = getattr(data, field).copy()
        if field == "coords":
            value[:, :data.n_dims] = value[rng.permutation(len(value)), :data.n_dims] * 1.7 + 30.0
        else:
            value = value[rng.permutation(len(value))]
        return dataclasses.replace(data, **{field: value})

    def draw(slice_data):
        return draw_samples(model, known_batch(model, slice_data, mode), mode, num_samples=2, seed=3, steps=5, progress=False)

    original = draw(data)
    changed_truth = draw(perturbed(hidden))
    assert np.array_equal(original.coordinates, changed_truth.coordinates)
    assert np.array_equal(original.expression, changed_truth.expression)
    changed_input = draw(perturbed(given))
    generated = original.coordinates if mode == "expr_to_pos" else original.expression
    assert not np.array_equal(generated, changed_input.coordinates if mode == "expr_to_pos" else changed_input.expression)
    again = draw(data)  # the same seed gives the same sample
    assert np.array_equal(original.coordinates, again.coordinates) and np.array_equal(original.expression, again.expression)


def test_impute_sees_neither_the_held_out_truth_nor_changes_the_given_genes(small_models):
    """Leakage in impute: the held-out genes' true values do not reach the sample (bitwise), and the
    given genes come back exactly as given."""
    import dataclasses

    from alphastomics.checkpoint import load_model
    from alphastomics.heldout import heldout_genes
    from alphastomics.draws import draw_samples, known_batch

    checkpoint, data_dir, slice_id = small_models["starmap"]
    model = load_model(checkpoint)
    data = load_slice(data_dir, slice_id)
    chosen = set(heldout_genes([g for g, m in zip(data.genes, data.gene_mask) if m], 0.2, 0))
    heldout = np.array([g in chosen for g in data.genes])

    def draw(slice_data):
        return draw_samples(model, known_batch(model, slice_data, "impute", heldout), "impute", 2, 5, 5, progress=False)

    original = draw(data)
    scrambled = data.expression.copy()
    scrambled[:, heldout] = np.random.default_rng(0).permutation(scrambled[:, heldout]) * 3 + 1
    changed = draw(dataclasses.replace(data, expression=scrambled))
    assert np.array_equal(original.expression, changed.expression)
    assert np.array_equal(original.expected_expression, changed.expected_expression)
    given = data.gene_mask.astype(bool) & ~heldout
    decoded_given = model.codec.decode(model.codec.encode(data.expression, data.gene_mask)[0])[:, given]
    assert np.allclose(original.expression[0][:, given], decoded_given, atol=1e-5)


def test_a_patch_trained_model_says_it_cannot_lay_out_a_whole_slice(bdtnp_dir, tmp_path):
    """Trained on 200-cell patches, asked to place a 760-cell BDTNP slab: the sample file records why its
    positions keep about one patch's extent and the report shows it above the tissue figures; given
    positions (pos_to_expr) are unaffected."""
    from conftest import SMALL_MODEL

    from alphastomics.config import config_from_dict
    from alphastomics.sample import sample_slice

    config = config_from_dict({**SMALL_MODEL, "training": {**SMALL_MODEL["training"], "data_mode": "cell", "cells_per_example": 200}})
    train(config, bdtnp_dir, tmp_path / "run", test_ids=["slab2"], export_to=tmp_path / "patches.ckpt", coordinate_frame="shared")
    placed = sample_slice(tmp_path / "patches.ckpt", bdtnp_dir, "slab2", "expr_to_pos", steps=2, num_samples=1, progress=False)
    caveat = placed.uns["alphastomics"]["caveat"]
    assert "patches of 200 cells" in caveat and f"lay out {placed.n_obs} cells" in caveat and "data_mode: slice" in caveat
    from markupsafe import escape

    from alphastomics.evaluate import evaluate_sample, write_metrics
    from alphastomics.report.render import render_report
    from alphastomics.io.sample_file import write_sample as write_h5ad_atomic

    write_h5ad_atomic(placed, tmp_path / "slab2.expr_to_pos.h5ad")
    table, details = evaluate_sample(placed, config.evaluation, source="slab2.expr_to_pos.h5ad", reference_dir=bdtnp_dir)
    html = render_report(bdtnp_dir / "manifest.json", write_metrics(table, details, tmp_path / "m.tsv")[:1],
                         [tmp_path / "slab2.expr_to_pos.h5ad"])
    assert f'<p class="warn"><b>slab2 · expr_to_pos · alphastomics</b>: {escape(caveat)}.</p>' in html
    filled = sample_slice(tmp_path / "patches.ckpt", bdtnp_dir, "slab2", "pos_to_expr", steps=2, num_samples=1, progress=False)
    assert "caveat" not in filled.uns["alphastomics"]


def test_the_exported_posterior_mean_of_expression_averages_to_the_training_mean(small_models, tmp_path):
    """export --data calibrates pos_to_expr's posterior mean per gene on the training slices: over
    the training cells it averages to each gene's training mean; on the held-out slice it is the
    uncalibrated posterior mean times the factors (the same correlations); a file exported without
    data samples as before."""
    from scipy.stats import pearsonr

    from alphastomics.checkpoint import load_model
    from alphastomics.draws import CALIBRATION_DRAWS, draw_samples, expected_expression, known_batch

    checkpoint, data_dir, slice_id = small_models["starmap"]
    model = load_model(checkpoint)  # train(..., export_to=...) exports with the training data
    assert model.expression_calibration is not None and model.expression_calibration.shape == (len(model.genes),)
    predicted, measured = [], []
    for train_slice in model.train_slices:
        data = load_slice(data_dir, train_slice)
        n = len(data.cell_ids)
        predicted.append(expected_expression(model, known_batch(model, data, "pos_to_expr"), list(range(CALIBRATION_DRAWS)))[:n])
        measured.append(data.expression)
    calibrated_level = (np.concatenate(predicted) * model.expression_calibration).mean(0)
    assert np.allclose(calibrated_level, np.concatenate(measured).mean(0), rtol=1e-3, atol=1e-5)

    plain = tmp_path / "plain.ckpt"
    result = subprocess.run([sys.executable, "-m", "alphastomics.cli", "export", "--checkpoint",
                             str(Path(checkpoint).parent / "starmap" / "training.json"), "--out", str(plain)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    uncalibrated = load_model(plain)
    assert uncalibrated.expression_calibration is None
    data = load_slice(data_dir, slice_id)
    with_factors = draw_samples(model, known_batch(model, data, "pos_to_expr"), "pos_to_expr", 1, 0, 5, progress=False,
                                posterior_mean_draws=4).expected_expression
    without = draw_samples(uncalibrated, known_batch(uncalibrated, data, "pos_to_expr"), "pos_to_expr", 1, 0, 5, progress=False,
                           posterior_mean_draws=4).expected_expression
    assert np.allclose(with_factors, without * model.expression_calibration, rtol=1e-5, atol=1e-6)
    gene = int(np.argmax(without.std(0)))
    assert pearsonr(with_factors[:, gene], data.expression[:, gene])[0] == pytest.approx(
        pearsonr(without[:, gene], data.expression[:, gene])[0], abs=1e-5)


def test_the_expression_temperature_changes_the_draws_not_the_posterior_mean_and_is_recorded(small_models):
    from alphastomics.sample import sample_slice

    checkpoint, data_dir, slice_id = small_models["bdtnp"]
    sharp, full = (sample_slice(checkpoint, data_dir, slice_id, "pos_to_expr", steps=5, num_samples=2, progress=False,
                                posterior_mean_draws=2, expression_temperature=t) for t in (0.5, 1.0))
    assert sharp.uns["alphastomics"]["expression_temperature"] == 0.5 and full.uns["alphastomics"]["expression_temperature"] == 1.0
    assert not np.allclose(sharp.layers["expr_pred"], full.layers["expr_pred"])
    # the posterior mean averages first-step estimates, not sampler draws
    assert np.array_equal(sharp.layers["expr_pred_mean"], full.layers["expr_pred_mean"])
    default = sample_slice(checkpoint, data_dir, slice_id, "pos_to_expr", steps=5, num_samples=2, progress=False,
                           posterior_mean_draws=2)
    assert default.uns["alphastomics"]["expression_temperature"] == 0.9  # sampling.expression_temperature


def test_zero_sampling_steps_means_every_diffusion_step(small_models):
    """`--steps 0` (config/full.yaml's sampling.steps) samples all diffusion steps; it once fell
    back to the training config's 50."""
    from alphastomics.checkpoint import load_model
    from alphastomics.sample import sample_slice

    checkpoint, data_dir, slice_id = small_models["starmap"]
    model = load_model(checkpoint)
    assert model.schedule.steps == 20 and model.config.sampling.steps == 50
    assert model.sampling_steps(0) is None and model.sampling_steps(7) == 7 and model.sampling_steps(None) == 50
    model.config.sampling.steps = 0
    assert model.sampling_steps(None) is None
    every = sample_slice(checkpoint, data_dir, slice_id, "expr_to_pos", steps=0, num_samples=1, progress=False)
    assert every.uns["alphastomics"]["steps"] == 20
    few = sample_slice(checkpoint, data_dir, slice_id, "expr_to_pos", steps=4, num_samples=1, progress=False)
    assert few.uns["alphastomics"]["steps"] == 4
