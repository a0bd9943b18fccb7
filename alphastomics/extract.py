"""``alphastomics extract``: per-cell AlphaSTomics embeddings of any h5ad (or a slice of a
preprocessed dataset), in ``obsm['X_alphastomics']``, ready for ``scanpy.pp.neighbors`` and leiden.

The embedding is the network's last-layer features of each cell with both modalities shown clean.
A cell needs both: where a file has only expression (dissociated cells), its coordinates are drawn
first (``expr_to_pos``); where it has only coordinates, its expression (``pos_to_expr``). The input
rules are those of ``alphastomics sample``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from alphastomics.checkpoint import load_model
from alphastomics.errors import InputError
from alphastomics.io.shards import load_slice
from alphastomics.draws import cell_embedding, draw_samples, known_batch, section_place
from alphastomics.io.sample_file import write_sample as write_h5ad_atomic
from alphastomics.user_data import NORMALIZATIONS, read_user_h5ad

log = logging.getLogger(__name__)

EMBEDDING_KEY = "X_alphastomics"


@torch.no_grad()
def embed_slice(model, data, has_expression: bool, has_coordinates: bool, seed: int = 0, steps: int | None = None) -> tuple[np.ndarray, str]:
    """(cells, D) embedding of one slice and how its missing modality was filled."""
    mode = "joint" if has_expression and has_coordinates else "expr_to_pos" if has_expression else "pos_to_expr"
    place, _ = section_place(model, data, mode, None, has_coordinates, f"slice {data.slice_id!r}")
    if mode == "joint":
        batch = known_batch(model, data, mode, place=place)
        return cell_embedding(model.network, batch.expression, batch.positions, batch)[: len(data.cell_ids)], "both given"
    draws = draw_samples(model, known_batch(model, data, mode, place=place), mode, 1, seed, steps, progress=False)
    return draws.embedding, f"{'coordinates' if has_expression else 'expression'} generated first ({mode}, seed {seed})"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="model file (model.ckpt)")
    p.add_argument("--data", required=True, help="an .h5ad, or a preprocessed dataset directory with --slice")
    p.add_argument("--slice", default=None, dest="slice_id", help="slice of a preprocessed dataset directory")
    p.add_argument("--out", required=True, help="output .h5ad: the cells with obsm['X_alphastomics']")
    p.add_argument("--slice-key", default=None, help="obs key: embed each slice of the file on its own")
    p.add_argument("--position-key", default="spatial", help="obsm key of the coordinates (default: spatial)")
    p.add_argument("--cell-type-key", default=None, help="obs key of cell types, kept in the output")
    p.add_argument("--normalization", choices=NORMALIZATIONS, default="checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampling steps where a modality must be generated first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def main(args: argparse.Namespace) -> int:
    started = time.time()
    model = load_model(args.checkpoint, args.device)
    steps = model.sampling_steps(args.steps)
    parts = []
    if Path(args.data).is_dir():
        if args.slice_id is None:
            raise InputError(f"{args.data}: a preprocessed dataset directory: name the slice with --slice")
        slices, has_expression, has_coordinates = [load_slice(args.data, args.slice_id)], True, True
    else:
        user = read_user_h5ad(args.data, model.genes, model.training_normalization, args.normalization, args.slice_key,
                              args.position_key, args.cell_type_key, model.frame.dims)
        slices, has_expression, has_coordinates = user.slices, user.has_expression, user.has_coordinates
    for data in slices:
        embedding, how = embed_slice(model, data, has_expression, has_coordinates, args.seed, steps)
        obs = pd.DataFrame({"slice_id": data.slice_id}, index=pd.Index(data.cell_ids.astype(str), name="cell_id"))
        if data.cell_types is not None:
            obs["cell_type"] = pd.Categorical([None if t is None else str(t) for t in data.cell_types])
        part = ad.AnnData(X=data.expression.astype(np.float32), obs=obs,
                          var=pd.DataFrame({"measured": data.gene_mask.astype(bool)}, index=pd.Index(data.genes, name="gene")))
        part.obsm[EMBEDDING_KEY] = embedding.astype(np.float32)
        if has_coordinates:
            part.obsm["spatial"] = data.coords[:, : data.n_dims].astype(np.float32)
        part.uns["alphastomics_embedding"] = {"how": how, "checkpoint_sha256": model.sha256, "dims": int(embedding.shape[1])}
        parts.append(part)
    adata = parts[0] if len(parts) == 1 else ad.concat(parts, merge="same", uns_merge="first")
    write_h5ad_atomic(adata, args.out)
    log.info("wrote %s: %d cells x %d embedding dims (%.1f s)", args.out, adata.n_obs, adata.obsm[EMBEDDING_KEY].shape[1],
             time.time() - started)
    return 0
