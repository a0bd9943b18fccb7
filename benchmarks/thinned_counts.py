"""Cells captured differently: a held-out slice thinned to fewer counts, or missing genes, placed and imputed by a trained model.

A user's dissociated cells (scRNA-seq) carry 5-20x fewer counts per cell than the spatial data a
model was trained on, and often not every gene of its panel. This benchmark imitates that on a
real held-out slice with known positions: its counts are thinned binomially (each count kept with
probability f, as a shallower capture would), or a random share of its genes is removed, and the
file goes through the user path (`alphastomics sample --data FILE.h5ad`: normalised as the
model's training data were, genes matched by name). Scored against the slice's true coordinates
and expression as `evaluate` scores a sample file: expr_to_pos's consensus layout by distance
Spearman and kNN@10; impute (a seeded 10% of the file's genes hidden) by the median over hidden
genes of the Spearman correlation over cells.

    python benchmarks/thinned_counts.py       # the demo's STARmap model on BZ14 (README's first command)
    python benchmarks/thinned_counts.py --checkpoint results/bdtnp_drosophila/model/model.ckpt \\
        --data resources/bdtnp_drosophila/bdtnp_slab2.h5ad --fractions 1 --drop-genes 0.3

Prints a table and, last, one line of JSON: per variant, the figures and their difference from
the unthinned slice.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alphastomics.checkpoint import load_model  # noqa: E402
from alphastomics.io.sample_file import EXPR_PRED_MEAN, HELDOUT, SPATIAL_PRED_CONSENSUS, dense  # noqa: E402
from alphastomics.metrics.expression import spearman_per_column  # noqa: E402
from alphastomics.metrics.geometry import distance_metrics  # noqa: E402
from alphastomics.metrics.neighbourhoods import knn_preservation  # noqa: E402
from alphastomics.sample import sample_user_data  # noqa: E402
from alphastomics.user_data import read_user_h5ad  # noqa: E402

HOLDOUT_FRACTION = 0.1


def thinned(adata: ad.AnnData, fraction: float, rng: np.random.Generator) -> ad.AnnData:
    """Each count kept with probability ``fraction`` (binomial thinning); refuses non-count data."""
    counts = dense(adata.X)
    if (counts < 0).any() or not np.allclose(counts, np.round(counts)):
        raise SystemExit("thinning needs raw counts in X; this file holds other values")
    out = adata.copy()
    out.X = sp.csr_matrix(rng.binomial(np.round(counts).astype(np.int64), fraction).astype(np.float32))
    return out


def without_genes(adata: ad.AnnData, share: float, rng: np.random.Generator) -> ad.AnnData:
    keep = np.sort(rng.choice(adata.n_vars, size=adata.n_vars - int(round(share * adata.n_vars)), replace=False))
    return adata[:, keep].copy()


def scores(model, path: Path, full_depth: Path, steps: int | None, num_samples: int) -> dict[str, float]:
    """The file at ``path`` placed and imputed; imputation scored against ``full_depth``'s values of the hidden genes."""
    user = read_user_h5ad(path, model.genes, model.training_normalization, dims=model.frame.dims)
    placed = sample_user_data(model, user, "expr_to_pos", model.sampling_steps(steps), 0, num_samples,
                              model.config.sampling.sampler, progress=False)
    true = np.asarray(placed.obsm["spatial"], np.float64)
    layout = np.asarray(placed.obsm[SPATIAL_PRED_CONSENSUS], np.float64)
    imputed = sample_user_data(model, user, "impute", model.sampling_steps(steps), 0, num_samples,
                               model.config.sampling.sampler, holdout_fraction=HOLDOUT_FRACTION, progress=False)
    hidden = imputed.var[HELDOUT].to_numpy(bool)
    truth = read_user_h5ad(full_depth, model.genes, model.training_normalization, dims=model.frame.dims)
    expression = truth.slices[0].expression[:, hidden]  # the hidden genes at full depth: what a deeper capture measures
    return {
        "cells": int(placed.n_obs),
        "genes_matched": int(user.report["genes_matched"]),
        "counts_per_cell": float(dense(ad.read_h5ad(path).X).sum(1).mean()),
        "consensus_distance_spearman_median": distance_metrics(true, layout, [0.1])[0]["distance_spearman_median"],
        "consensus_knn_preservation_k10": knn_preservation(true, layout, [10])[0]["knn_preservation_k10"],
        "impute_expr_mean_spearman_gene_median": float(np.nanmedian(spearman_per_column(
            expression, dense(imputed.layers[EXPR_PRED_MEAN])[:, hidden]))),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="results/starmap_mpfc/model/model.ckpt")
    p.add_argument("--data", default="resources/starmap_mpfc/starmap_mpfc_20180424_BZ14_control.h5ad", help="the held-out slice, raw counts in X, coordinates in obsm['spatial']")
    p.add_argument("--fractions", nargs="+", type=float, default=[1.0, 0.3, 0.2, 0.1], help="shares of the counts kept")
    p.add_argument("--drop-genes", type=float, default=0.3, help="a variant without this share of the genes (0: none)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    model = load_model(args.checkpoint)
    source = ad.read_h5ad(args.data)
    trained_on = set(model.train_slices) & set(map(str, source.obs.get("slice_id", [])))
    if trained_on:
        raise SystemExit(f"{args.data}: holds {', '.join(sorted(trained_on))}, a training slice of {args.checkpoint}")
    rng = np.random.default_rng(args.seed)
    variants = {f"counts x{f:g}": thinned(source, f, rng) for f in args.fractions}
    if args.drop_genes > 0:
        variants[f"without {args.drop_genes:.0%} of genes"] = without_genes(source, args.drop_genes, rng)
    started, results = time.time(), {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, adata in variants.items():
            path = Path(tmp) / "slice.h5ad"
            adata.write_h5ad(path)
            results[name] = scores(model, path, Path(args.data), args.steps, args.num_samples)
            print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in results[name].items()), file=sys.stderr, flush=True)
    reference = results.get("counts x1")
    if reference:
        for name, values in results.items():
            values["consensus_distance_spearman_change"] = round(values["consensus_distance_spearman_median"]
                                                                 - reference["consensus_distance_spearman_median"], 4)
    print(json.dumps({"checkpoint": str(args.checkpoint), "data": str(args.data), "wall_s": round(time.time() - started),
                      **{name: {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}
                         for name, values in results.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
