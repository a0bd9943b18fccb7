"""The single-file model checkpoint that sampling loads, and conversion from training checkpoints.

Format (``torch.save`` of a dict): ``format`` ("alphastomics-model-v2"), ``config`` (Config as a
dict), ``genes``, ``codec`` (expression code and per-gene moments, alphastomics.data.expression),
``frame`` (coordinate frame fitted on the training slices, alphastomics.data.frames),
``train_slices`` (the slices the model was trained on), ``preprocessing`` (the training data's
normalisation and measured genes, to match a user's file), ``state_dict`` (network weights only),
``training`` (steps, epochs, source checkpoint), ``atlas_reference`` (shared frames: training
cells' coordinates and expression channels, alphastomics.data.atlas_prior; None without), and, when exported with the training data,
``expression_calibration`` (per-gene factors of the pos_to_expr posterior mean,
``alphastomics.draws.expression_level_calibration``). A Lightning checkpoint file or a DeepSpeed
checkpoint directory (ZeRO shards) can both be exported to it.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from alphastomics.io.files import atomic_output
from alphastomics.config import Config, config_from_dict
from alphastomics.data.atlas_prior import AtlasReference
from alphastomics.data.conditions import ConditionVocabulary
from alphastomics.data.expression import ExpressionCodec
from alphastomics.data.frames import CoordinateFrame
from alphastomics.diffusion.schedule import NoiseSchedule
from alphastomics.draws import expression_level_calibration
from alphastomics.errors import InputError
from alphastomics.model.network import AlphaSTomicsNet

FORMAT = "alphastomics-model-v2"
NETWORK_PREFIX = "network."
EMA_PREFIX = "ema_network."


def atomic_torch_save(obj, path: str | Path) -> None:
    with atomic_output(path) as temp:
        torch.save(obj, temp)


def read_training_checkpoint(path: str | Path) -> dict:
    """Load a Lightning checkpoint file, or consolidate a DeepSpeed checkpoint directory."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint not found: {path}")
    if path.is_dir():
        from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "consolidated.ckpt"
            convert_zero_checkpoint_to_fp32_state_dict(str(path), str(out))
            return torch.load(out, map_location="cpu", weights_only=False)
    return torch.load(path, map_location="cpu", weights_only=False)


def export_model(training_checkpoint: str | Path, out: str | Path, data_dir: str | Path | None = None) -> Path:
    """The single-file model of a training checkpoint; with ``data_dir`` (the preprocessed dataset it
    was trained on) the posterior mean of expression is calibrated on the training slices."""
    ckpt = read_training_checkpoint(training_checkpoint)
    hp = ckpt.get("hyper_parameters", {})
    if "config" not in hp or "genes" not in hp:
        raise InputError(f"{training_checkpoint}: not an AlphaSTomics training checkpoint (no config/genes in hyper_parameters)")
    # The moving average of the weights when training kept one, else the last weights.
    prefix = EMA_PREFIX if any(k.startswith(EMA_PREFIX) for k in ckpt["state_dict"]) else NETWORK_PREFIX
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    blob = {
        "format": FORMAT,
        "config": hp["config"],
        "genes": hp["genes"],
        "codec": hp["codec"],
        "frame": hp["coordinate_frame"],
        "train_slices": list(hp.get("train_slices") or []),
        "preprocessing": hp.get("preprocessing") or {},
        "conditions": hp.get("conditions") or {},
        "atlas_reference": ckpt.get("atlas_reference"),
        "state_dict": state,
        "training": {
            "global_step": ckpt.get("global_step"),
            "epoch": ckpt.get("epoch"),
            "source": str(training_checkpoint),
            "weights": "moving average" if prefix == EMA_PREFIX else "last step",
        },
    }
    if data_dir is not None:
        model = model_from_blob(blob)
        blob["expression_calibration"] = expression_level_calibration(model, data_dir).tolist()
    atomic_torch_save(blob, out)
    return Path(out)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_network(config: Config, num_genes: int, codec: ExpressionCodec, frame: CoordinateFrame,
                  conditions: ConditionVocabulary | None = None, atlas_prior: bool = False) -> AlphaSTomicsNet:
    """``atlas_prior``: the model has an atlas reference (alphastomics.data.atlas_prior)."""
    return AlphaSTomicsNet(config.model, codec.channel_genes, num_genes, config.diffusion.diffusion_steps,
                           absolute_positions=frame.kind == "shared",
                           condition_sizes=conditions.sizes if conditions is not None else (0, []),
                           place_axis=None if frame.places is None else frame.places.axis, atlas_prior=atlas_prior)


@dataclass
class LoadedModel:
    network: AlphaSTomicsNet  # in eval mode, on the requested device
    schedule: NoiseSchedule
    config: Config
    genes: list[str]
    codec: ExpressionCodec
    frame: CoordinateFrame
    train_slices: list[str]
    sha256: str
    preprocessing: dict | None = None  # training data: "normalization" applied, "measured_genes" (bool per gene)
    conditions: ConditionVocabulary | None = None  # what the model can be conditioned on
    expression_calibration: np.ndarray | None = None  # (G,) factors of the pos_to_expr posterior mean; None: not calibrated
    atlas_reference: AtlasReference | None = None  # training cells near which given positions look (alphastomics.data.atlas_prior)

    @property
    def training_normalization(self) -> str:
        return str((self.preprocessing or {}).get("normalization") or "none")

    @property
    def measured_genes(self) -> np.ndarray:
        """(G,) bool: genes some training slice measured (those the model can generate)."""
        measured = (self.preprocessing or {}).get("measured_genes")
        return np.asarray(measured, dtype=bool) if measured else np.ones(len(self.genes), dtype=bool)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def sampling_steps(self, requested: int | None) -> int | None:
        """Steps to sample with: ``requested`` when given, else the training config's
        ``sampling.steps``; 0 from either means every diffusion step (None for the sampler)."""
        steps = self.config.sampling.steps if requested is None else requested
        return steps or None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a non-checkpoint file
        raise InputError(f"{path}: not a readable checkpoint ({err})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else None
        hint = f"it is {found}, made by an older version: train again" if found else "run `alphastomics export` on a training checkpoint"
        raise InputError(f"{path}: not an AlphaSTomics {FORMAT} model file ({hint})")
    return model_from_blob(blob, file_sha256(path), device, source=str(path))


def model_from_blob(blob: dict, sha256: str = "", device: str | torch.device = "cpu", source: str = "model") -> LoadedModel:
    """A model from the dict of a model file (``load_model``, or ``export_model`` before it writes one)."""
    config = config_from_dict(blob["config"])
    codec = ExpressionCodec.from_dict(blob["codec"])
    frame = CoordinateFrame.from_dict(blob["frame"])
    conditions = ConditionVocabulary.from_dict(blob.get("conditions"))
    atlas_reference = AtlasReference.from_dict(blob.get("atlas_reference"))
    network = build_network(config, len(blob["genes"]), codec, frame, conditions, atlas_reference is not None)
    try:
        network.load_state_dict(blob["state_dict"])
    except RuntimeError as err:
        first = str(err).splitlines()[1].strip() if len(str(err).splitlines()) > 1 else str(err)
        raise InputError(f"{source}: its weights do not fit this version's network ({first[:200]}); train again") from None
    network.to(device).eval()
    schedule = NoiseSchedule(config.diffusion.diffusion_steps, config.diffusion.nu_expression, config.diffusion.nu_position).to(device)
    calibration = blob.get("expression_calibration")
    return LoadedModel(network, schedule, config, list(blob["genes"]), codec, frame, list(blob.get("train_slices", [])),
                       sha256, blob.get("preprocessing") or {}, conditions,
                       None if calibration is None else np.asarray(calibration, dtype=np.float32), atlas_reference)


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="Lightning checkpoint file, DeepSpeed checkpoint directory, or training.json of a run")
    p.add_argument("--out", required=True, help="single-file model for `alphastomics sample` (model.ckpt)")
    p.add_argument("--data", default=None, help="the preprocessed dataset the model was trained on: calibrates the per-gene "
                                                 "level of pos_to_expr's posterior mean on the training slices")


def main(args) -> int:
    import json

    source = Path(args.checkpoint)
    if source.suffix == ".json":
        if not source.is_file():
            raise InputError(f"training summary not found: {source}")
        summary = json.loads(source.read_text())
        source = source.parent / (summary.get("best_checkpoint") or summary["last_checkpoint"])
    export_model(source, args.out, args.data)
    return 0
