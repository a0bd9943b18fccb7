"""Sampling one slice in one mode -> an h5ad with true and generated values side by side."""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from alphastomics import MODES, __version__
from alphastomics.checkpoint import file_sha256, load_model
from alphastomics.data.slices import Frame, collate, make_example
from alphastomics.diffusion.sampler import sample
from alphastomics.errors import InputError
from alphastomics.io.manifest import load_manifest
from alphastomics.io.shards import SliceData, load_slice

log = logging.getLogger(__name__)

GENERATED = {"expr_to_pos": ["position"], "pos_to_expr": ["expression"], "joint": ["expression", "position"]}


def sample_slice(checkpoint: str | Path, data_dir: str | Path, slice_id: str, mode: str, steps: int | None = None, seed: int = 0, device: str = "cpu", dataset: str | None = None) -> ad.AnnData:
    if mode not in MODES:
        raise InputError(f"unknown mode '{mode}' (one of {', '.join(MODES)})")
    started = time.time()
    network, schedule, config, genes, scaler = load_model(checkpoint, device)
    manifest = load_manifest(data_dir)
    if list(manifest["genes"]) != genes:
        raise InputError(f"{data_dir}: gene list differs from the one {checkpoint} was trained on ({len(manifest['genes'])} vs {len(genes)} genes)")
    data = load_slice(data_dir, slice_id, manifest)
    batch = collate([make_example(data, scaler)]).to(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    steps = steps or config.sampling.steps or None
    expression, positions = sample(
        network, schedule, batch, "expression" in GENERATED[mode], "position" in GENERATED[mode], steps, generator
    )
    embedding = cell_embedding(network, expression, positions, batch)
    expression_pred = scaler.inverse(expression[0].cpu().numpy()) * data.gene_mask
    frame = Frame.of(data.coords)
    coords_pred = frame.to_source(positions[0].cpu().numpy())
    adata = to_anndata(data, expression_pred, coords_pred, mode)
    adata.obsm["alphastomics_embedding"] = embedding
    adata.uns["alphastomics"].update(
        {
            "dataset": dataset or manifest.get("dataset", ""),
            "seed": seed,
            "steps": steps or schedule.steps,
            "checkpoint_sha256": file_sha256(checkpoint),
            "runtime_s": round(time.time() - started, 2),
        }
    )
    return adata


@torch.no_grad()
def cell_embedding(network, expression, positions, batch) -> np.ndarray:
    """Per-cell features of the final network layer for the finished sample (given and generated
    values, both shown as clean, t = 0): the AlphaSTomics embedding of each cell."""
    zeros = torch.zeros(expression.shape[0], dtype=torch.long, device=expression.device)
    pred = network(expression, positions, zeros, zeros, batch.node_mask, batch.gene_mask)
    return pred.embedding[0].float().cpu().numpy()


def to_anndata(data: SliceData, expression_pred: np.ndarray, coords_pred: np.ndarray, mode: str) -> ad.AnnData:
    """Lay out true and generated values as described in docs/FORMATS.md."""
    d = data.n_dims
    given_expression = "expression" not in GENERATED[mode]
    given_position = "position" not in GENERATED[mode]
    obs = pd.DataFrame(
        {"slice_id": data.slice_id, "platform": data.platform},
        index=pd.Index(data.cell_ids.astype(str), name="cell_id"),
    )
    if data.cell_types is not None:
        obs["cell_type"] = pd.Categorical(data.cell_types.astype(str))
    var = pd.DataFrame({"measured": data.gene_mask.astype(bool)}, index=pd.Index(data.genes, name="gene"))
    adata = ad.AnnData(X=data.expression.astype(np.float32), obs=obs, var=var)
    adata.layers["expr_pred"] = (data.expression if given_expression else expression_pred).astype(np.float32)
    adata.obsm["spatial"] = data.coords[:, :d].astype(np.float32)
    adata.obsm["spatial_pred"] = (data.coords if given_position else coords_pred)[:, :d].astype(np.float32)
    adata.uns["alphastomics"] = {
        "mode": mode,
        "method": "alphastomics",
        "slice_id": data.slice_id,
        "n_dims": d,
        "generated": GENERATED[mode],
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default=None, help="dataset name recorded in the output")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def main(args: argparse.Namespace) -> int:
    adata = sample_slice(args.checkpoint, args.data, args.slice_id, args.mode, args.steps, args.seed, args.device, args.dataset)
    write_h5ad_atomic(adata, args.out)
    log.info("wrote %s (%d cells, mode %s, %.1f s)", args.out, adata.n_obs, args.mode, adata.uns["alphastomics"]["runtime_s"])
    return 0
