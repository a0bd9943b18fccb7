"""``alphastomics denoise``: expression cleaned by the model, for sparse platforms.

Each cell's measured expression is noised to a small diffusion time t0 (``--time``, a fraction of
the model's diffusion steps) and the model's estimate of the clean expression is taken, given the
cells' coordinates and their neighbours: E[x0 | x_t0, coordinates], averaged over ``--num-samples``
noise draws and decoded as P(expressed) x magnitude. A small t0 keeps what was measured and fills
what the measurement dropped where the tissue context says it should be; a larger t0 leans more on
the context. Output: the input cells with ``layers['denoised']`` beside ``X``.
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

from alphastomics.checkpoint import LoadedModel, load_model
from alphastomics.diffusion.sampler import sample
from alphastomics.errors import InputError
from alphastomics.io.shards import SliceData, load_slice
from alphastomics.sample import known_batch, write_h5ad_atomic
from alphastomics.user_data import NORMALIZATIONS, read_user_h5ad

log = logging.getLogger(__name__)


@torch.no_grad()
def denoise_slice(model: LoadedModel, data: SliceData, time_fraction: float, num_samples: int, seed: int,
                  steps: int | None = None, progress: bool = False) -> np.ndarray:
    """(cells, G) denoised expression of one slice (measured genes; others 0).

    Dropout only ever turns a value into 0, so measured non-zero values are kept as known and the
    zeros are generated (RePaint inpainting of single entries), starting from the measured
    expression noised to ``time_fraction`` of the diffusion steps; the result is the posterior
    mean over ``num_samples`` draws."""
    if not 0 < time_fraction <= 1:
        raise InputError(f"--time must be in (0, 1] (a fraction of the diffusion steps), got {time_fraction}")
    batch = known_batch(model, data, "pos_to_expr").repeat(num_samples)
    n = len(data.cell_ids)
    measured_nonzero = torch.zeros(batch.expression.shape[:2] + (model.codec.num_genes,), dtype=torch.bool)
    measured_nonzero[:, :n] = torch.from_numpy((data.expression > 0) & data.gene_mask.astype(bool)[None, :])
    known_entries = measured_nonzero[..., torch.from_numpy(model.codec.channel_genes)]
    start = max(1, int(round(time_fraction * model.schedule.steps)))
    total = steps or model.config.sampling.steps or model.schedule.steps
    grid_steps = max(2, int(round(total * time_fraction)))
    generators = [torch.Generator().manual_seed(seed + i) for i in range(num_samples)]
    expression, _ = sample(model.network, model.schedule, batch, True, False, centred_positions=model.frame.kind == "per_slice",
                           steps=max(2, int(round(grid_steps / time_fraction))), generator=generators, progress=progress,
                           known_entries=known_entries, start_step=start)
    denoised = model.codec.decode_expectation(expression[:, :n].float().numpy()).mean(0)
    denoised = np.where(data.expression > 0, data.expression, denoised)  # measured values stay as measured
    return (denoised * data.gene_mask.astype(np.float32)).astype(np.float32)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="model file (model.ckpt)")
    p.add_argument("--data", required=True, help="an .h5ad with coordinates and expression, or a preprocessed dataset with --slice")
    p.add_argument("--slice", default=None, dest="slice_id")
    p.add_argument("--out", required=True, help="output .h5ad with layers['denoised']")
    p.add_argument("--time", type=float, default=0.2, help="diffusion time t0 as a fraction of the model's steps (default 0.2)")
    p.add_argument("--num-samples", type=int, default=8, help="noise draws averaged (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slice-key", default=None)
    p.add_argument("--position-key", default="spatial")
    p.add_argument("--normalization", choices=NORMALIZATIONS, default="checkpoint")


def main(args: argparse.Namespace) -> int:
    started = time.time()
    model = load_model(args.checkpoint)
    if Path(args.data).is_dir():
        if args.slice_id is None:
            raise InputError(f"{args.data}: a preprocessed dataset directory: name the slice with --slice")
        slices = [load_slice(args.data, args.slice_id)]
    else:
        user = read_user_h5ad(args.data, model.genes, model.training_normalization, args.normalization, args.slice_key,
                              args.position_key, None, model.frame.dims)
        if not (user.has_expression and user.has_coordinates):
            raise InputError(f"{args.data}: denoising needs expression and coordinates (obsm[{args.position_key!r}])")
        slices = user.slices
    parts = []
    for data in slices:
        denoised = denoise_slice(model, data, args.time, args.num_samples, args.seed)
        obs = pd.DataFrame({"slice_id": data.slice_id}, index=pd.Index(data.cell_ids.astype(str), name="cell_id"))
        part = ad.AnnData(X=data.expression.astype(np.float32), obs=obs,
                          var=pd.DataFrame({"measured": data.gene_mask.astype(bool)}, index=pd.Index(data.genes, name="gene")))
        part.layers["denoised"] = denoised
        part.obsm["spatial"] = data.coords[:, : data.n_dims].astype(np.float32)
        parts.append(part)
    adata = parts[0] if len(parts) == 1 else ad.concat(parts, merge="same")
    adata.uns["alphastomics_denoise"] = {"time_fraction": args.time, "num_samples": args.num_samples, "seed": args.seed,
                                         "checkpoint_sha256": model.sha256}
    write_h5ad_atomic(adata, args.out)
    log.info("wrote %s (%d cells, t0 = %.2f of the steps, %.1f s)", args.out, adata.n_obs, args.time, time.time() - started)
    return 0
