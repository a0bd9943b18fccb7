"""The single-file model checkpoint that sampling loads, and conversion from training checkpoints.

Format (``torch.save`` of a dict): ``format`` ("alphastomics-model-v1"), ``config`` (Config as a
dict), ``genes``, ``scaler`` (per-gene mean/std), ``state_dict`` (network weights only),
``training`` (steps, epochs, source checkpoint). A Lightning checkpoint file or a DeepSpeed
checkpoint directory (ZeRO shards) can both be exported to it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch

from alphastomics.config import config_from_dict
from alphastomics.data.slices import ExpressionScaler
from alphastomics.diffusion.schedule import NoiseSchedule
from alphastomics.errors import InputError
from alphastomics.model.network import AlphaSTomicsNet

FORMAT = "alphastomics-model-v1"
NETWORK_PREFIX = "network."


def atomic_torch_save(obj, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def export_model(training_checkpoint: str | Path, out: str | Path) -> Path:
    ckpt = read_training_checkpoint(training_checkpoint)
    hp = ckpt.get("hyper_parameters", {})
    if "config" not in hp or "genes" not in hp:
        raise InputError(f"{training_checkpoint}: not an AlphaSTomics training checkpoint (no config/genes in hyper_parameters)")
    state = {k[len(NETWORK_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(NETWORK_PREFIX)}
    atomic_torch_save(
        {
            "format": FORMAT,
            "config": hp["config"],
            "genes": hp["genes"],
            "scaler": hp["scaler"],
            "state_dict": state,
            "training": {
                "global_step": ckpt.get("global_step"),
                "epoch": ckpt.get("epoch"),
                "source": str(training_checkpoint),
            },
        },
        out,
    )
    return Path(out)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """Returns (network in eval mode, schedule, config, genes, scaler)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"model checkpoint not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types for a non-checkpoint file
        raise InputError(f"{path}: not a readable checkpoint ({err})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise InputError(f"{path}: not an AlphaSTomics model file (run `alphastomics export` on a training checkpoint)")
    config = config_from_dict(blob["config"])
    network = AlphaSTomicsNet(config.model, len(blob["genes"]), config.diffusion.diffusion_steps)
    network.load_state_dict(blob["state_dict"])
    network.to(device).eval()
    schedule = NoiseSchedule(config.diffusion.diffusion_steps, config.diffusion.nu_expression, config.diffusion.nu_position).to(device)
    return network, schedule, config, list(blob["genes"]), ExpressionScaler.from_dict(blob["scaler"])


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="Lightning checkpoint file, DeepSpeed checkpoint directory, or training.json of a run")
    p.add_argument("--out", required=True, help="single-file model for `alphastomics sample` (model.ckpt)")


def main(args) -> int:
    import json

    source = Path(args.checkpoint)
    if source.suffix == ".json":
        if not source.is_file():
            raise InputError(f"training summary not found: {source}")
        summary = json.loads(source.read_text())
        source = source.parent / (summary.get("best_checkpoint") or summary["last_checkpoint"])
    export_model(source, args.out)
    return 0
