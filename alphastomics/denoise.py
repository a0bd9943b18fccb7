"""``alphastomics denoise``: expression cleaned by the model, for sparse platforms.

Dropout only ever turns a value into 0, so measured non-zero values are kept and only the zeros are
filled. The non-zeros are known entries (RePaint inpainting of single entries) and the zeros are
generated from the tissue context (the cell's other genes, its neighbours and their coordinates),
starting from the measured expression noised to the diffusion time t0 (``--time``, a fraction of
the model's diffusion steps), averaged over ``--num-samples`` draws: the model's probability p that
the gene is expressed there and its magnitude m if it is.

A zero is filled with P(expressed | measured 0) x m. With a dropout rate d,
P(expressed | 0) = p d / (p d + 1 - p) (Bayes): a gene that is often truly zero on the platform
keeps most of its zeros. d is estimated per gene from how many more zeros the slice has than the
model's training data had, 1 - (1 - zeros in the slice) / (1 - zeros in training), so the same
command leaves data without dropout as it was and fills dense in situ data with dropout fully
(BDTNP).

Two things make p a prior for that formula rather than a second reading of the zero:
- t0 defaults to 1: the zeros are generated from noise, not from the measured 0 noised a little.
  The measurement enters once, through d; started from the measured 0 noised a little, the model
  reads it a second time and fills fewer of the dropped values.
- each cell's p is shifted on the logit scale until the non-zeros the cell is expected to keep,
  sum over genes of p (1 - d), equal the non-zeros it kept. A model trained without this dropout
  reads a cell that lost half its values as a cell that expresses fewer genes; how many the cell
  kept says how many it had, and the shift makes P(expressed | 0) tell a dropped zero from a true
  one within a gene better than the unshifted p does.

What these choices measured: docs/findings/conditions.md ("benchmarks/conditions.py").

Output: the input cells with ``layers['denoised']`` beside ``X``, and each gene's estimated dropout
rate in ``var['dropout_rate']``.
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
from alphastomics.draws import known_batch
from alphastomics.io.sample_file import write_sample as write_h5ad_atomic
from alphastomics.user_data import NORMALIZATIONS, read_user_h5ad

log = logging.getLogger(__name__)

DEFAULT_DRAWS = 16  # the gain over the input is thin on count data, so the fill's own noise is averaged over many draws
DEFAULT_TIME = 1.0  # module docstring


def dropout_rate(expression: np.ndarray, gene_mask: np.ndarray, training_zero_fraction: np.ndarray | None) -> np.ndarray:
    """(G,) estimated fraction of each measured gene's expressed values that this slice lost to
    dropout: the excess of its zeros over the training data's, in [0, 1]. Without the training
    zero fractions (older checkpoints) every zero is taken for a dropout (1)."""
    if training_zero_fraction is None:
        return gene_mask.astype(np.float32)
    expressed = (expression > 0).mean(0)
    expected = 1.0 - training_zero_fraction
    rate = np.divide(expressed, expected, out=np.ones_like(expected, dtype=np.float64), where=expected > 0)
    return (np.clip(1.0 - rate, 0.0, 1.0) * gene_mask).astype(np.float32)


def expressed_given_zero(probability: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """P(expressed | measured 0) = p d / (p d + 1 - p) for P(expressed) p and dropout rate d (Bayes);
    0 where neither can be (p = 1 and d = 0: a gene always expressed that lost nothing)."""
    lost = probability * rate
    kept_zero = lost + (1.0 - probability)
    return np.divide(lost, kept_zero, out=np.zeros_like(lost), where=kept_zero > 0)


def match_kept_nonzeros(probability: np.ndarray, rate: np.ndarray, kept_nonzero: np.ndarray, adjustable: np.ndarray) -> np.ndarray:
    """(cells, G) P(expressed), each cell's shifted by one logit offset so that over the
    ``adjustable`` genes the number of non-zeros it is expected to keep after dropout,
    sum_g p'_g (1 - d_g), equals the number it kept (``kept_nonzero``, (cells, G) bool). Other
    genes are returned as they were (probability 1 for genes the model never sees as zero).
    Solved by bisection: the expected count rises with the offset."""
    p = np.clip(probability[:, adjustable].astype(np.float64), 1e-6, 1 - 1e-6)
    logits = np.log(p) - np.log1p(-p)
    keep = 1.0 - rate[adjustable].astype(np.float64)
    target = kept_nonzero[:, adjustable].sum(1)
    low, high = np.full(len(p), -30.0), np.full(len(p), 30.0)
    for _ in range(50):
        offset = (low + high) / 2
        expected = (keep / (1 + np.exp(-(logits + offset[:, None])))).sum(1)
        too_few = expected < target
        low, high = np.where(too_few, offset, low), np.where(too_few, high, offset)
    shifted = probability.astype(np.float64).copy()
    shifted[:, adjustable] = 1 / (1 + np.exp(-(logits + ((low + high) / 2)[:, None])))
    return shifted.astype(np.float32)


@torch.no_grad()
def denoise_slice(model: LoadedModel, data: SliceData, time_fraction: float, num_samples: int, seed: int,
                  steps: int | None = None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """((cells, G) denoised expression of one slice (measured genes; others 0), (G,) estimated
    dropout rate).

    Measured non-zero values are known entries and the zeros are generated (RePaint inpainting of
    single entries), starting from the measured expression noised to ``time_fraction`` of the
    diffusion steps; each zero becomes P(expressed | measured 0), with each cell's p matched to the
    non-zeros it kept, x the mean magnitude over ``num_samples`` draws (module docstring)."""
    if not 0 < time_fraction <= 1:
        raise InputError(f"--time must be in (0, 1] (a fraction of the diffusion steps), got {time_fraction}")
    batch = known_batch(model, data, "pos_to_expr").repeat(num_samples)
    n = len(data.cell_ids)
    measured_nonzero = torch.zeros(batch.expression.shape[:2] + (model.codec.num_genes,), dtype=torch.bool, device=batch.expression.device)
    measured_nonzero[:, :n] = torch.from_numpy((data.expression > 0) & data.gene_mask.astype(bool)[None, :]).to(measured_nonzero.device)
    known_entries = measured_nonzero[..., torch.from_numpy(model.codec.channel_genes).to(measured_nonzero.device)]
    start = max(1, int(round(time_fraction * model.schedule.steps)))
    total = model.sampling_steps(steps) or model.schedule.steps
    grid_steps = max(2, int(round(total * time_fraction)))
    generators = [torch.Generator().manual_seed(seed + i) for i in range(num_samples)]
    expression, _ = sample(model.network, model.schedule, batch, True, False, centred_positions=model.frame.kind == "per_slice",
                           steps=max(2, int(round(grid_steps / time_fraction))), generator=generators, progress=progress,
                           known_entries=known_entries, start_step=start)
    probability, magnitude = model.codec.decode_parts(expression[:, :n].float().cpu().numpy())
    rate = dropout_rate(data.expression, data.gene_mask, model.codec.zero_fraction)
    adjustable = model.codec.zero_inflated & data.gene_mask.astype(bool)
    probability = match_kept_nonzeros(probability.mean(0), rate, data.expression > 0, adjustable)
    fill = expressed_given_zero(probability, rate[None, :]) * magnitude.mean(0)
    denoised = np.where(data.expression > 0, data.expression, fill)  # measured values stay as measured
    return (denoised * data.gene_mask.astype(np.float32)).astype(np.float32), rate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="model file (model.ckpt)")
    p.add_argument("--data", required=True, help="an .h5ad with coordinates and expression, or a preprocessed dataset with --slice")
    p.add_argument("--slice", default=None, dest="slice_id")
    p.add_argument("--out", required=True, help="output .h5ad with layers['denoised']")
    p.add_argument("--time", type=float, default=DEFAULT_TIME,
                   help=f"diffusion time t0 the zeros are generated from, a fraction of the model's steps (default {DEFAULT_TIME:g})")
    p.add_argument("--num-samples", type=int, default=DEFAULT_DRAWS, help=f"noise draws averaged (default {DEFAULT_DRAWS})")
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
    if model.codec.zero_fraction is None:
        log.warning("%s records no training zero fractions (written by an older version): every zero is taken for a "
                    "dropout and filled; retrain to estimate each gene's dropout rate", args.checkpoint)
    parts, rates = [], []
    for data in slices:
        denoised, rate = denoise_slice(model, data, args.time, args.num_samples, args.seed)
        rates.append(rate)
        obs = pd.DataFrame({"slice_id": data.slice_id}, index=pd.Index(data.cell_ids.astype(str), name="cell_id"))
        part = ad.AnnData(X=data.expression.astype(np.float32), obs=obs,
                          var=pd.DataFrame({"measured": data.gene_mask.astype(bool)}, index=pd.Index(data.genes, name="gene")))
        part.layers["denoised"] = denoised
        part.obsm["spatial"] = data.coords[:, : data.n_dims].astype(np.float32)
        parts.append(part)
    adata = parts[0] if len(parts) == 1 else ad.concat(parts, merge="same")
    for data, rate in zip(slices, rates):  # slices lose different shares of their values
        adata.var["dropout_rate" if len(slices) == 1 else f"dropout_rate_{data.slice_id}"] = rate
    adata.uns["alphastomics_denoise"] = {"time_fraction": args.time, "num_samples": args.num_samples, "seed": args.seed,
                                         "checkpoint_sha256": model.sha256}
    write_h5ad_atomic(adata, args.out)
    log.info("wrote %s (%d cells, t0 = %.2f of the steps, %.1f s)", args.out, adata.n_obs, args.time, time.time() - started)
    return 0
