"""Sampling one slice in one mode -> an h5ad with true and generated values side by side."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from alphastomics import GENERATED_BY_MODE, MODES, __version__
from alphastomics.checkpoint import LoadedModel, load_model
from alphastomics.data.batch import SliceBatch
from alphastomics.data.slices import collate, make_example
from alphastomics.diffusion.sampler import SAMPLERS, sample
from alphastomics.diffusion.schedule import expression_noise
from alphastomics.errors import InputError
from alphastomics.io.manifest import load_manifest
from alphastomics.io.shards import SliceData, load_slice

log = logging.getLogger(__name__)

GENERATED = GENERATED_BY_MODE


@dataclass
class Draws:
    """S draws of one slice, decoded to source units: expression (S, N, G), coordinates (S, N, 3)."""

    expression: np.ndarray
    coordinates: np.ndarray
    embedding: np.ndarray  # (N, D) of the first draw
    seeds: list[int]
    expected_expression: np.ndarray | None = None  # (N, G) posterior mean (Rao-Blackwellised), pos_to_expr


def draw_samples(model: LoadedModel, batch: SliceBatch, mode: str, num_samples: int, seed: int, steps: int | None,
                 sampler: str = "ancestral", progress: bool = True) -> Draws:
    """``num_samples`` draws of the one slice in ``batch``; draw i uses its own generator seeded ``seed + i``,
    so each draw is reproducible alone whatever the batch it was made in."""
    seeds = [seed + i for i in range(num_samples)]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    known = batch.repeat(num_samples)
    expression, positions = sample(
        model.network, model.schedule, known, "expression" in GENERATED[mode], "position" in GENERATED[mode],
        centred_positions=model.frame.kind == "per_slice", steps=steps, generator=generators, progress=progress,
        sampler=sampler,
    )
    embedding = cell_embedding(model.network, expression[:1], positions[:1], batch)
    n = int(batch.node_mask[0].sum())
    n_dims = 3 if bool(batch.dim_mask[0, 2]) else 2
    decoded = model.codec.decode(expression[:, :n].cpu().numpy())
    coordinates = np.stack([model.frame.to_source(p[:n].cpu().numpy(), n_dims) for p in positions])
    expected = expected_expression(model, known, seeds)[:n] if mode == "pos_to_expr" else None
    return Draws(decoded, coordinates, embedding[:n], seeds, expected)


@torch.no_grad()
def expected_expression(model: LoadedModel, known: SliceBatch, seeds: list[int]) -> np.ndarray:
    """Posterior mean of expression at the given coordinates, from the same S draws.

    The plain average of S sampled expression matrices carries their sampling noise (the spread
    of single cells, about the whole variance of a gene when position says little about it), so
    with a few draws it scores worse than no model at all. Each draw's outcome is a function of
    its starting noise x_T, and the denoiser's x0 estimate at the first step is E[x0 | x_T, given
    values], the expected outcome of that draw: averaging those over the draws (Rao-Blackwell)
    estimates the same posterior mean without the sampling noise. Decoded as P(expressed) times
    the expected magnitude. (STARmap BZ14, S = 4: average of the draws MSE 4.8, training mean 3.51,
    this estimate 3.49.)
    """
    B = known.expression.shape[0]
    start = expression_noise(known.expression.shape, known.node_mask.cpu(),
                             [torch.Generator().manual_seed(s) for s in seeds]).to(known.expression.device)
    T = model.schedule.steps
    t = torch.full((B,), T, dtype=torch.long, device=start.device)
    zeros = torch.zeros(B, dtype=torch.long, device=start.device)
    pred = model.network(start, known.positions, t, zeros, model.schedule.alpha_bar("expression")[t],
                         torch.ones(B, device=start.device), known.node_mask, known.gene_mask, known.dim_mask)
    return model.codec.decode_expectation(pred.expression.float().cpu().numpy()).mean(0)


def sample_slice(checkpoint: str | Path, data_dir: str | Path, slice_id: str, mode: str, steps: int | None = None,
                 seed: int = 0, device: str = "cpu", dataset: str | None = None, num_samples: int | None = None,
                 progress: bool = True, sampler: str | None = None) -> ad.AnnData:
    if mode not in MODES:
        raise InputError(f"unknown mode '{mode}' (one of {', '.join(MODES)})")
    started = time.time()
    model = load_model(checkpoint, device)
    manifest = load_manifest(data_dir)
    if list(manifest["genes"]) != model.genes:
        raise InputError(f"{data_dir}: gene list differs from the one {checkpoint} was trained on ({len(manifest['genes'])} vs {len(model.genes)} genes)")
    if slice_id in model.train_slices:
        log.warning("slice %r was one of the model's training slices: its scores measure fit, not generalisation", slice_id)
    data = load_slice(data_dir, slice_id, manifest)
    batch = collate([make_example(data, model.codec, model.frame)]).to(device)
    steps = steps or model.config.sampling.steps or None
    num_samples = num_samples or model.config.sampling.num_samples
    sampler = sampler or model.config.sampling.sampler
    draws = draw_samples(model, batch, mode, num_samples, seed, steps, sampler, progress)
    adata = to_anndata(data, draws, mode, model.frame.kind)
    adata.uns["alphastomics"].update(
        {
            "dataset": dataset or manifest.get("dataset", ""),
            "seeds": draws.seeds,
            "num_samples": num_samples,
            "sampler": sampler,
            "steps": steps or model.schedule.steps,
            "checkpoint_sha256": model.sha256,
            "train_slices": list(model.train_slices),
            "trained_on_slice": slice_id in model.train_slices,
            "runtime_s": round(time.time() - started, 2),
        }
    )
    return adata


@torch.no_grad()
def cell_embedding(network, expression, positions, batch) -> np.ndarray:
    """Per-cell features of the final network layer for the finished sample (given and generated
    values, both shown as clean, t = 0): the AlphaSTomics embedding of each cell."""
    zeros = torch.zeros(expression.shape[0], dtype=torch.long, device=expression.device)
    ones = torch.ones(expression.shape[0], device=expression.device)
    pred = network(expression, positions, zeros, zeros, ones, ones, batch.node_mask, batch.gene_mask, batch.dim_mask)
    return pred.embedding[0].float().cpu().numpy()


def align_draws(coordinates: np.ndarray, n_dims: int, iterations: int = 3) -> np.ndarray:
    """Generalised Procrustes without scaling: each draw rotated/reflected and translated onto the
    mean of all, repeated a few times; (S, N, d) -> aligned (S, N, d)."""
    from scipy.linalg import orthogonal_procrustes

    aligned = coordinates[..., :n_dims].astype(np.float64) - coordinates[..., :n_dims].mean(1, keepdims=True)
    reference = aligned[0]
    for _ in range(iterations):
        for i in range(len(aligned)):
            rotation, _ = orthogonal_procrustes(aligned[i], reference)
            aligned[i] = aligned[i] @ rotation
        reference = aligned.mean(0)
    return aligned


def position_uncertainty(coordinates: np.ndarray, n_dims: int, frame_kind: str) -> np.ndarray:
    """Per cell, the RMS distance of its S generated positions to their mean (after aligning the
    draws to each other in a per-slice frame, where orientation is arbitrary)."""
    d = coordinates[..., :n_dims].astype(np.float64)
    if frame_kind == "per_slice":
        d = align_draws(coordinates, n_dims)
    return np.sqrt(((d - d.mean(0)) ** 2).sum(-1).mean(0)).astype(np.float32)


def to_anndata(data: SliceData, draws: Draws, mode: str, frame_kind: str) -> ad.AnnData:
    """Lay out true and generated values as described in docs/FORMATS.md."""
    d = data.n_dims
    generated = GENERATED[mode]
    obs = pd.DataFrame(
        {"slice_id": data.slice_id, "platform": data.platform},
        index=pd.Index(data.cell_ids.astype(str), name="cell_id"),
    )
    if data.cell_types is not None:
        # Unknown stays unknown: missing values, never the string "None".
        labels = pd.Series(data.cell_types, dtype=object).where(pd.notna(pd.Series(data.cell_types, dtype=object)), None)
        obs["cell_type"] = pd.Categorical(labels.to_numpy(), categories=sorted({str(v) for v in labels if v is not None}))
    var = pd.DataFrame({"measured": data.gene_mask.astype(bool)}, index=pd.Index(data.genes, name="gene"))
    adata = ad.AnnData(X=data.expression.astype(np.float32), obs=obs, var=var)
    measured = data.gene_mask.astype(np.float32)
    if "expression" in generated:
        adata.layers["expr_pred"] = (draws.expression[0] * measured).astype(np.float32)
        if draws.expected_expression is not None:  # pos_to_expr: draws share the cells' positions
            adata.layers["expr_pred_mean"] = (draws.expected_expression * measured).astype(np.float32)
            adata.layers["expr_pred_var"] = (draws.expression.var(0) * measured).astype(np.float32)
    else:
        adata.layers["expr_pred"] = data.expression.astype(np.float32)
    adata.obsm["spatial"] = data.coords[:, :d].astype(np.float32)
    if "position" in generated:
        adata.obsm["spatial_pred"] = draws.coordinates[0][:, :d].astype(np.float32)
        if mode == "expr_to_pos" and len(draws.seeds) > 1:
            adata.obs["position_uncertainty"] = position_uncertainty(draws.coordinates, d, frame_kind)
    else:
        adata.obsm["spatial_pred"] = data.coords[:, :d].astype(np.float32)
    adata.obsm["alphastomics_embedding"] = draws.embedding
    adata.uns["alphastomics"] = {
        "mode": mode,
        "method": "alphastomics",
        "slice_id": data.slice_id,
        "n_dims": d,
        "generated": generated,
        "coordinate_frame": frame_kind,
        "package_version": __version__,
    }
    return adata


def write_h5ad_atomic(adata: ad.AnnData, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp.h5ad", dir=out.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="model file written by `alphastomics train`/`export` (model.ckpt)")
    p.add_argument("--data", required=True, help="directory holding manifest.json and the shards")
    p.add_argument("--slice", required=True, dest="slice_id", help="slice id to sample")
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: sampling.steps of the training config, else all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first draw (draw i uses seed + i)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="draws per slice (default: sampling.num_samples of the training config); pos_to_expr keeps their mean")
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="ancestral (stochastic) or ddim (deterministic, good with few --steps); default: sampling.sampler")
    p.add_argument("--dataset", default=None, help="dataset name recorded in the output")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def main(args: argparse.Namespace) -> int:
    adata = sample_slice(args.checkpoint, args.data, args.slice_id, args.mode, args.steps, args.seed, args.device,
                         args.dataset, args.num_samples, sampler=args.sampler)
    write_h5ad_atomic(adata, args.out)
    log.info("wrote %s (%d cells, mode %s, %.1f s)", args.out, adata.n_obs, args.mode, adata.uns["alphastomics"]["runtime_s"])
    return 0
