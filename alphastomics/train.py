"""Training: the LightningModule (Lightning's hooks, the moving average of the weights, the
optimiser; the objective itself is alphastomics.diffusion.objective) and Trainer construction
(strategies, checkpoints, logging), plus the ``alphastomics train`` command."""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import time
from collections import Counter
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from alphastomics import __version__
from alphastomics.checkpoint import build_network
from alphastomics.config import Config, apply_overrides, config_from_dict, load_config, read_yaml, save_config
from alphastomics.data.atlas_prior import AtlasReference
from alphastomics.data.batch import SliceBatch
from alphastomics.data.conditions import ConditionVocabulary
from alphastomics.data.expression import ExpressionCodec
from alphastomics.data.frames import FRAMES, CoordinateFrame
from alphastomics.data.places import AXES, SectionPlaces, axis_index
from alphastomics.data.slices import PatchDataset, SizeBucketBatchSampler, SliceDataset, collate
from alphastomics.diffusion.objective import MODE_REGIMES, DiffusionObjective
from alphastomics.errors import AlphaSTomicsError, ConfigError
from alphastomics.io.manifest import load_manifest
from alphastomics.io.shards import load_slice

log = logging.getLogger(__name__)


class TrainingDiverged(AlphaSTomicsError):
    pass


class DiffusionModule(L.LightningModule):
    # (``coordinate_frame``, not ``frame``: Lightning's save_hyperparameters drops an argument named frame.)
    def __init__(self, config: dict, genes: list[str], codec: dict, coordinate_frame: dict, train_slices: list[str] | None = None,
                 preprocessing: dict | None = None, conditions: dict | None = None, atlas_prior: bool = False):
        super().__init__()
        self.save_hyperparameters()
        self.config: Config = config_from_dict(config)
        c = self.config
        self.codec = ExpressionCodec.from_dict(codec)
        self.frame = CoordinateFrame.from_dict(coordinate_frame)
        self.conditions = ConditionVocabulary.from_dict(conditions)
        # Registered before the networks: the optimiser and gradient clipping then see the parameters
        # in the order they always had, which fixes the rounding of the gradient norm (same seed, same weights).
        self.objective = DiffusionObjective(c, self.codec, self.frame)
        self.network = build_network(c, len(genes), self.codec, self.frame, self.conditions, atlas_prior)
        # The training cells the prior looks up (set by train(); saved in every checkpoint, since the
        # exported model samples with it): numpy arrays, not weights.
        self.atlas_reference: AtlasReference | None = None
        # Moving average of the weights (sampling uses it: averaged weights give cleaner samples
        # than the last step's). Off under ZeRO-3, which partitions parameters across ranks.
        self.ema_network = None
        if c.training.ema_decay > 0 and c.training.strategy != "deepspeed_stage_3":
            self.ema_network = copy.deepcopy(self.network).requires_grad_(False)
        self.slices_seen: Counter[str] = Counter()  # training examples per slice on this rank
        self.start_step: int | None = None

    def compute_losses(self, batch: SliceBatch, generator: torch.Generator | None = None, regimes=None, masking: bool = False,
                       network=None):
        """The objective's losses of ``network`` (default: the trained one) on ``batch``."""
        return self.objective.losses(network or self.network, batch, generator, regimes, masking)

    # -- Lightning hooks -----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.atlas_reference is not None:
            checkpoint["atlas_reference"] = self.atlas_reference.to_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.atlas_reference = AtlasReference.from_dict(checkpoint.get("atlas_reference")) or self.atlas_reference

    def on_train_start(self):
        self.start_step = self.global_step  # > 0 when resumed from a checkpoint

    def training_step(self, batch: SliceBatch, batch_idx: int):
        self.slices_seen.update(batch.slice_ids)
        losses = self.compute_losses(batch, masking=self.config.masking.enable)
        if not torch.isfinite(losses["loss"]):
            parts = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
            raise TrainingDiverged(f"training loss is not finite at step {self.global_step} (epoch {self.current_epoch}): {parts}")
        B = batch.expression.shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", on_step=True, on_epoch=True, batch_size=B)
        return losses["loss"]

    def on_fit_start(self):
        # DeepSpeed's bf16 casts the whole module, the moving average too. In bf16 an average at
        # decay 0.999 cannot move: each step's change is below bf16's resolution. Keep it in fp32.
        if self.ema_network is not None:
            self.ema_network.float()

    @torch.no_grad()
    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema_network is None:
            return
        # Short runs: the decay warms up so early weights do not linger (as in timm's ModelEmaV3).
        decay = min(self.config.training.ema_decay, (1 + self.global_step) / (10 + self.global_step))
        for average, current in zip(self.ema_network.parameters(), self.network.parameters()):
            average.lerp_(current.detach().to(average.dtype), 1.0 - decay)
        for average, current in zip(self.ema_network.buffers(), self.network.buffers()):
            average.copy_(current)

    def validation_step(self, batch: SliceBatch, batch_idx: int):
        # Fixed noise and every regime of the training mode, so validation losses are comparable;
        # the averaged weights, which are the ones exported for sampling.
        generator = torch.Generator().manual_seed(1000 + batch_idx)
        B = batch.expression.shape[0]
        for regime in MODE_REGIMES[self.config.training.training_mode]:
            losses = self.compute_losses(batch, generator, regimes=torch.full((B,), regime), network=self.ema_network)
            for name, value in losses.items():
                self.log(f"val/{name}", value, prog_bar=name == "loss", on_epoch=True, batch_size=B, sync_dist=True)

    def configure_optimizers(self):
        t = self.config.training
        optimizer = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=t.lr, weight_decay=t.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = min(t.warmup_steps, total // 10)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if t.lr_schedule == "constant":
                return 1.0
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device)


# -- data ----------------------------------------------------------------------------------------
def split_slices(manifest: dict, test: list[str], validation: list[str]) -> tuple[list[str], list[str]]:
    both = sorted(set(test) & set(validation))
    if both:
        raise ConfigError(f"slice(s) both test and validation: {', '.join(both)}; a test slice must stay unseen")
    known = list(manifest["slices"])
    for sid in list(test) + list(validation):
        if sid not in known:
            raise ConfigError(f"slice '{sid}' named in test/validation slices is not in the manifest (slices: {', '.join(known)})")
    train = [s for s in known if s not in set(test) | set(validation)]
    if not train:
        raise ConfigError("no slice left for training after removing test and validation slices")
    return train, list(validation)


def build_dataloaders(config: Config, data_dir: Path, train_ids: list[str], val_ids: list[str], manifest: dict,
                      coordinate_frame: str = "per_slice", section_axis: str | None = None):
    t = config.training
    train_slices = [load_slice(data_dir, s, manifest) for s in train_ids]
    codec = ExpressionCodec.fit([s.expression for s in train_slices], [s.gene_mask for s in train_slices], config.model.expression_code)
    places = None
    if section_axis:
        if coordinate_frame != "shared":
            raise ConfigError(f"section_axis {section_axis!r} needs coordinate_frame: shared (sections of one registered frame)")
        places = SectionPlaces.fit(axis_index(section_axis), train_slices)
    frame = CoordinateFrame.fit(coordinate_frame, [(s.coords, s.n_dims) for s in train_slices], places)
    conditions = ConditionVocabulary.fit(train_slices, config.model.condition_on_cell_type, list(config.model.slice_covariates))
    reference = None
    if coordinate_frame == "shared":
        reference = AtlasReference.fit(train_slices, codec, config.model.atlas_prior_neighbours, t.seed)
    # each training section sees the atlas without itself (or without its cells around each cell),
    # as a held-out section does
    priors = None if reference is None else [reference.training_priors(s.coords, s.slice_id) for s in train_slices]
    if t.data_mode == "cell":
        train_set = PatchDataset(train_slices, codec, frame, t.cells_per_example, t.examples_per_epoch, t.seed, conditions,
                                 priors)
    else:
        train_set = SliceDataset(train_slices, codec, frame, t.examples_per_epoch, conditions, priors, t.seed)
    train_loader = DataLoader(
        train_set,
        batch_sampler=SizeBucketBatchSampler(train_set, t.batch_size, shuffle=True, seed=t.seed),
        collate_fn=collate,
        num_workers=t.num_workers,
    )
    val_loader = None
    if val_ids:
        val_slices = [load_slice(data_dir, s, manifest) for s in val_ids]
        val_priors = None if reference is None else [reference.prior(s.coords)[None] for s in val_slices]
        val_set = SliceDataset(val_slices, codec, frame, conditions=conditions, atlas_priors=val_priors)
        val_loader = DataLoader(
            val_set, batch_sampler=SizeBucketBatchSampler(val_set, t.batch_size, shuffle=False), collate_fn=collate
        )
    return train_loader, val_loader, codec, frame, conditions, reference


def training_preprocessing(manifest: dict, train_set) -> dict:
    """How the training data were normalised and which genes they measured: what a user's own
    file must be matched to (alphastomics.user_data)."""
    slices = train_set.slices if hasattr(train_set, "slices") else None
    platforms = {e["platform"] for sid, e in manifest["slices"].items()}
    applied = {manifest["platforms"][p]["normalization"].get("applied") for p in platforms if p in manifest["platforms"]}
    measured = np.zeros(len(manifest["genes"]), dtype=bool)
    for example in (train_set.examples if hasattr(train_set, "examples") else []):
        measured |= example.gene_mask
    for s in slices or []:
        measured |= s.gene_mask.astype(bool)
    return {"normalization": applied.pop() if len(applied) == 1 else "mixed", "measured_genes": measured.tolist()}


# -- trainer -------------------------------------------------------------------------------------
def build_strategy(config: Config):
    t = config.training
    if t.strategy.startswith("deepspeed_stage_"):
        from lightning.pytorch.strategies import DeepSpeedStrategy

        return DeepSpeedStrategy(stage=int(t.strategy[-1]))
    # `auto` on several devices means DDP: build it here so it gets find_unused_parameters.
    if t.strategy == "ddp" or (t.strategy == "auto" and t.devices * t.num_nodes > 1):
        from lightning.pytorch.strategies import DDPStrategy

        backend = "nccl" if torch.cuda.is_available() and t.accelerator in ("auto", "gpu", "cuda") else "gloo"
        # Unrouted experts and the mask values (when masking is off) get no gradient in a step.
        return DDPStrategy(process_group_backend=backend, find_unused_parameters=True)
    if t.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        return FSDPStrategy()
    return "auto"


def build_trainer(config: Config, out_dir: Path, has_validation: bool, extra_callbacks=()) -> L.Trainer:
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    t = config.training
    # last.ckpt after every epoch (the newest checkpoint, under that name), so a killed or pre-empted job
    # loses at most one epoch. save_last would not do it: Lightning writes "last" only beside a top-k save,
    # and, without a validation loop, saves at an epoch's end only where validation would run every epoch.
    last_every_epoch = ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="last", monitor=None, save_top_k=1,
                                       every_n_epochs=1, save_on_train_epoch_end=True, enable_version_counter=False)
    checkpoints = [last_every_epoch]
    if has_validation:
        # the model to export: the best on the validation slices; without them the last (the training
        # loss of an epoch, a few examples at random noise levels, is no criterion)
        checkpoints.insert(0, ModelCheckpoint(
            dirpath=out_dir / "checkpoints", filename="best", monitor="val/loss", mode="min", save_top_k=1,
            enable_version_counter=False,  # a re-run overwrites best instead of writing best-v1 beside a stale one
        ))
    loggers = [CSVLogger(out_dir, name="logs", version=""), TensorBoardLogger(out_dir, name="logs", version="tensorboard")]
    if t.wandb:
        from lightning.pytorch.loggers import WandbLogger

        loggers.append(WandbLogger(project="alphastomics", name=t.exp_name, save_dir=str(out_dir), offline=os.environ.get("WANDB_MODE") != "online"))
    plugins = []
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        # A failed or pre-empted job is retried by Snakemake and resumes from last.ckpt; Lightning's
        # own requeue would run a second copy of the job behind Snakemake's back.
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return L.Trainer(
        plugins=plugins,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(config),
        precision=t.precision,
        max_epochs=t.epochs,
        max_steps=t.max_steps,
        gradient_clip_val=t.grad_clip or None,
        check_val_every_n_epoch=t.val_every_n_epochs,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        use_distributed_sampler=False,  # SizeBucketBatchSampler splits batches across ranks itself
        callbacks=[*checkpoints, TQDMProgressBar(refresh_rate=10), *extra_callbacks],
        logger=loggers,
        default_root_dir=out_dir,
        enable_model_summary=False,
    )


class CsvHistory:
    """Keeps the training curves of a resumed run whole.

    Lightning's CSV logger rewrites ``metrics.csv`` from what it logged since it started, so after
    ``--resume`` the file would hold only the resumed part. The rows logged before are moved aside
    (``metrics.before_resume.csv``, which also survives a run killed again) and put back in front
    of the new ones when training ends.
    """

    def __init__(self, path: Path):
        self.path = path
        self.kept = path.with_name("metrics.before_resume.csv")
        if path.is_file():
            import pandas as pd

            earlier = pd.read_csv(self.kept) if self.kept.is_file() else None
            current = pd.read_csv(path)
            if earlier is not None and "step" in current and len(current):
                earlier = earlier[earlier["step"] < current["step"].min()]
            combined = current if earlier is None else pd.concat([earlier, current], ignore_index=True)
            _write_csv_atomically(combined, self.kept)

    def merge(self, start_step: int | None) -> None:
        import pandas as pd

        if not self.kept.is_file() or not self.path.is_file():
            return
        earlier, current = pd.read_csv(self.kept), pd.read_csv(self.path)
        if "step" in earlier and start_step is not None:
            earlier = earlier[earlier["step"] < start_step]  # rows of steps the resumed run did again
        _write_csv_atomically(pd.concat([earlier, current], ignore_index=True), self.path)
        self.kept.unlink()


def _write_csv_atomically(frame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.to_csv(tmp, index=False)
    os.replace(tmp, path)


def code_fingerprint() -> str:
    """Hash of every package file the train command runs (the pipeline's fingerprint of the stage,
    alphastomics.stages): a checkpoint made by other code is not resumed."""
    from alphastomics.stages import StageFiles

    return hashlib.sha256(f"{__version__} {StageFiles().fingerprint('train')}".encode()).hexdigest()


def resume_key(config: Config, genes: list[str], train_ids: list[str], coordinate_frame: str, section_axis: str | None = None) -> str:
    payload = json.dumps({"config": config.to_dict(), "genes": genes, "train": train_ids, "frame": coordinate_frame,
                          "code": code_fingerprint(), **({"section_axis": section_axis} if section_axis else {})}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def train(config: Config, data_dir: str | Path, out_dir: str | Path, test_ids=(), val_ids=(), resume: bool = False,
          export_to: str | Path | None = None, coordinate_frame: str = "per_slice", section_axis: str | None = None) -> dict:
    """Train on every slice of ``data_dir`` except the test and validation slices; returns a summary.

    ``coordinate_frame``: ``per_slice`` or ``shared`` (see alphastomics.data.frames); ``section_axis``:
    a shared frame's cutting axis, each section's place its extent along it (alphastomics.data.places)."""
    started = time.time()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(config.training.seed, workers=True, verbose=False)
    manifest = load_manifest(data_dir)
    train_ids, val_ids = split_slices(manifest, list(test_ids), list(val_ids))
    train_loader, val_loader, codec, frame, conditions, reference = build_dataloaders(config, data_dir, train_ids, val_ids, manifest, coordinate_frame,
                                                                           section_axis)
    genes = list(manifest["genes"])
    log.info("training on %d slices (%s), validating on %s; %s coordinate frame", len(train_ids), ", ".join(train_ids),
             ", ".join(val_ids) or "none", coordinate_frame)

    module = DiffusionModule(config.to_dict(), genes, codec.to_dict(), frame.to_dict(), train_ids,
                             training_preprocessing(manifest, train_loader.dataset), conditions.to_dict(), reference is not None)
    module.atlas_reference = reference
    save_config(config, out_dir / "config.yaml")
    key = resume_key(config, genes, train_ids, coordinate_frame, section_axis)
    key_file = out_dir / "checkpoints" / "resume_key.txt"
    last = out_dir / "checkpoints" / "last.ckpt"
    ckpt_path = None
    if resume and last.exists():
        if key_file.exists() and key_file.read_text().strip() == key:
            ckpt_path = str(last)
            log.info("resuming from %s", last)
        else:
            log.warning("not resuming from %s: it was made with another config, gene list, slices or model code", last)
    trainer = build_trainer(config, out_dir, val_loader is not None)
    if trainer.is_global_zero:
        if ckpt_path is None:
            # A checkpoint this run does not continue must go before the key is rewritten: a run killed
            # before its first save would otherwise leave the old weights under the new settings' key,
            # and the next --resume would restore them (and stop at once if they had reached max_steps).
            last.unlink(missing_ok=True)
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_text(key + "\n")
    history = CsvHistory(out_dir / "logs" / "metrics.csv") if ckpt_path and trainer.is_global_zero else None
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path)
    if history is not None:
        history.merge(module.start_step)

    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    (out_dir / "logs" / f"slices_seen_rank{trainer.global_rank}.json").write_text(json.dumps(dict(module.slices_seen)))
    best = trainer.checkpoint_callback.best_model_path or str(last)
    summary = {
        "package_version": __version__,
        "best_checkpoint": os.path.relpath(best, out_dir) if best else None,
        "last_checkpoint": os.path.relpath(last, out_dir),
        "best_score": float(trainer.checkpoint_callback.best_model_score) if trainer.checkpoint_callback.best_model_score is not None else None,
        "monitor": trainer.checkpoint_callback.monitor,
        "start_step": module.start_step,
        "global_step": trainer.global_step,
        "epochs": trainer.current_epoch,
        "resumed_from": ckpt_path,
        "train_slices": train_ids,
        "validation_slices": val_ids,
        "coordinate_frame": coordinate_frame,
        "section_axis": section_axis,
        "strategy": config.training.strategy,
        "devices": config.training.devices,
        "num_nodes": config.training.num_nodes,
        "world_size": trainer.world_size,
        "runtime_s": round(time.time() - started, 1),
    }
    if trainer.is_global_zero:
        if export_to:
            from alphastomics.checkpoint import export_model

            export_model(best, export_to, data_dir)
            summary["exported"] = str(export_to)
        tmp = out_dir / ".training.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        os.replace(tmp, out_dir / "training.json")
    return summary


# -- command line ---------------------------------------------------------------------------------
OVERRIDES = {
    # flag: (config key, type)
    "--training-mode": ("training.training_mode", str),
    "--data-mode": ("training.data_mode", str),
    "--use-gated-attention": ("model.use_gated_attention", "bool"),
    "--gate-type": ("model.gate_type", str),
    "--use-moe": ("model.use_moe", "bool"),
    "--num-experts": ("model.num_experts", int),
    "--moe-top-k": ("model.moe_top_k", int),
    "--enable-masking": ("masking.enable", "bool"),
    "--expression-mask-ratio": ("masking.expression_mask_ratio", float),
    "--position-mask-ratio": ("masking.position_mask_ratio", float),
    "--batch-size": ("training.batch_size", int),
    "--epochs": ("training.epochs", int),
    "--max-steps": ("training.max_steps", int),
    "--lr": ("training.lr", float),
    "--exp-name": ("training.exp_name", str),
    "--strategy": ("training.strategy", str),
    "--devices": ("training.devices", int),
    "--num-nodes": ("training.num_nodes", int),
    "--precision": ("training.precision", str),
    "--accelerator": ("training.accelerator", str),
}


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="dataset directory holding manifest.json and shards/ (results/<dataset>)")
    p.add_argument("--out", required=True, help="output directory (checkpoints, logs, config.yaml, training.json)")
    p.add_argument("--config", help="YAML config (model, diffusion, loss, masking, training sections; datasets: optional)")
    p.add_argument("--dataset", help="dataset name in the config's datasets: section, for its test and validation slices")
    p.add_argument("--test-slices", nargs="*", default=None, help="slices held out from training (overrides the config)")
    p.add_argument("--val-slices", nargs="*", default=None, help="validation slices (overrides the config)")
    p.add_argument("--coordinate-frame", choices=FRAMES, default=None,
                   help="per_slice: every slice in its own frame; shared: one frame for all slices (registered atlas, "
                        "slabs of one specimen). Default: the dataset's coordinate_frame in the config, else per_slice")
    p.add_argument("--section-axis", choices=AXES, default=None,
                   help="shared frame: the cutting axis; each section's place is its extent along it, the model learns "
                        "tissue given the place and samples a section at any place (default: the dataset's section_axis)")
    p.add_argument("--resume", action="store_true", help="continue from checkpoints/last.ckpt when it matches config and code")
    p.add_argument("--export", default=None, help="also write the single-file model for sampling here (default OUT/model.ckpt)")
    p.add_argument("--no-export", action="store_true", help="do not export (the pipeline exports in its own rule)")
    for flag, (key, kind) in OVERRIDES.items():
        p.add_argument(flag, type=_bool if kind == "bool" else kind, default=None, metavar="BOOL" if kind == "bool" else None, help=f"overrides {key}")


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    overrides = {key: getattr(args, flag.lstrip("-").replace("-", "_")) for flag, (key, _) in OVERRIDES.items()}
    config = apply_overrides(config, overrides)
    test, val, frame, section_axis = [], [], "per_slice", None
    if args.dataset:
        datasets = read_yaml(args.config).get("datasets", {}) if args.config else {}
        if args.dataset not in datasets:
            raise ConfigError(f"dataset '{args.dataset}' is not in the config's datasets: ({', '.join(datasets) or 'none'})")
        test = datasets[args.dataset].get("test_slices", [])
        val = datasets[args.dataset].get("validation_slices", [])
        frame = datasets[args.dataset].get("coordinate_frame", "per_slice")
        section_axis = datasets[args.dataset].get("section_axis")
    test = args.test_slices if args.test_slices is not None else test
    val = args.val_slices if args.val_slices is not None else val
    export_to = None if args.no_export else (args.export or str(Path(args.out) / "model.ckpt"))
    frame = args.coordinate_frame or frame
    section_axis = args.section_axis or section_axis
    summary = train(config, args.data, args.out, test, val, resume=args.resume, export_to=export_to, coordinate_frame=frame,
                    section_axis=section_axis)
    log.info("training finished: %s", json.dumps(summary))
    return 0
