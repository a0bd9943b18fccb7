"""Conditional generation, inverse design and denoising (issue 13), measured on the pipeline's models.

    python benchmarks/conditions.py      # after the pipeline: results/starmap_mpfc, results/bdtnp_drosophila

1. STARmap BZ14, ``pos_to_expr --condition cell_type`` (the slice's own labels), through the CLI as a
   user runs it: share of generated cells that a 15-NN classifier on real training cells assigns to
   their conditioned type, beside the same seeds drawn unconditionally.
2. The same with ``--target Pcp4:high --target-scale W``: the rise of mean generated Pcp4 over the
   unguided draw of the same seed, in standard deviations of Pcp4 in the data, and the energy
   distance of the other genes to real cells, guided / unguided.
3. ``denoise`` on each dataset's held-out slice with half of its non-zero values set to 0: median
   per-gene Pearson with the undropped values of the denoised expression and of the dropped input.

The last line is one JSON object with the headline figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy.stats import pearsonr

from alphastomics.checkpoint import load_model
from alphastomics.denoise import denoise_slice
from alphastomics.io.shards import load_slice


def _cli(*args) -> None:
    result = subprocess.run([sys.executable, "-m", "alphastomics.cli", *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])


def conditional_and_target(checkpoint: Path, data: Path, slice_id: str, target_scale: float, out: Path,
                           sampling: tuple[str, ...] = ()) -> dict:
    figures = {}
    conditional = out / "conditional.h5ad"
    started = time.perf_counter()
    _cli("sample", "--checkpoint", checkpoint, "--data", data, "--slice", slice_id, "--mode", "pos_to_expr",
         "--condition", "cell_type", "--out", conditional, *sampling)
    figures["conditional_seconds"] = round(time.perf_counter() - started, 1)
    _cli("evaluate", conditional, "--reference", data, "--out", out / "conditional.tsv")
    metrics = pd.read_csv(out / "conditional.tsv", sep="\t").query("method == 'alphastomics'").set_index("metric")["value"]
    figures["condition_type_accuracy"] = round(float(metrics["condition_type_accuracy"]), 3)
    figures["condition_type_accuracy_unconditional"] = round(float(metrics["condition_type_accuracy_unguided"]), 3)
    figures["condition_type_energy"] = round(float(metrics["condition_type_energy"]), 3)
    figures["condition_type_energy_unconditional"] = round(float(metrics["condition_type_energy_unguided"]), 3)
    print(f"condition cell_type: {figures['condition_type_accuracy']:.1%} of cells typed as their condition "
          f"(unconditional, same seeds: {figures['condition_type_accuracy_unconditional']:.1%}); energy distance to real cells "
          f"of the type {figures['condition_type_energy']:.3f} vs {figures['condition_type_energy_unconditional']:.3f}", flush=True)

    designed = out / "designed.h5ad"
    _cli("sample", "--checkpoint", checkpoint, "--data", data, "--slice", slice_id, "--mode", "pos_to_expr",
         "--target", "Pcp4:high", "--target-scale", target_scale, "--out", designed, *sampling)
    _cli("evaluate", designed, "--reference", data, "--out", out / "designed.tsv")
    metrics = pd.read_csv(out / "designed.tsv", sep="\t").query("method == 'alphastomics'").set_index("metric")["value"]
    a = ad.read_h5ad(designed)
    pcp4 = list(a.var_names).index("Pcp4")
    sd = float(np.asarray(a.X[:, pcp4]).std())
    gain = (a.layers["expr_pred"][:, pcp4].mean() - a.layers["expr_pred_unguided"][:, pcp4].mean()) / sd
    ratio = metrics["target_energy_other_genes"] / metrics["target_energy_other_genes_unguided"]
    figures.update({"target_scale": target_scale, "pcp4_gain_sd": round(float(gain), 2),
                    "other_genes_energy_ratio": round(float(ratio), 3),
                    "target_fraction_met": round(float(metrics["target_fraction_met"]), 3),
                    "target_fraction_met_unguided": round(float(metrics["target_fraction_met_unguided"]), 3)})
    print(f"target Pcp4:high, scale {target_scale}: mean Pcp4 +{gain:.2f} sd over the unguided draw; energy distance of the "
          f"other genes to real cells x{ratio:.3f}; targeted cells meeting the target {metrics['target_fraction_met']:.1%} "
          f"(unguided {metrics['target_fraction_met_unguided']:.1%})", flush=True)
    return figures


def denoising(checkpoint: Path, data: Path, slice_id: str, time_fraction: float, seed: int = 0) -> dict:
    model = load_model(checkpoint)
    clean = load_slice(data, slice_id)
    rng = np.random.default_rng(seed)
    truth = clean.expression
    nonzero = np.argwhere(truth > 0)
    drop = nonzero[rng.random(len(nonzero)) < 0.5]
    dropped = truth.copy()
    dropped[drop[:, 0], drop[:, 1]] = 0
    started = time.perf_counter()
    denoised = denoise_slice(model, dataclasses.replace(clean, expression=dropped), time_fraction, 4, seed)
    seconds = time.perf_counter() - started
    measured = np.flatnonzero(clean.gene_mask)

    def median_pearson(values):
        return float(np.median([pearsonr(values[:, g], truth[:, g])[0] for g in measured
                                if truth[:, g].std() > 0 and values[:, g].std() > 0]))

    figures = {"input_pearson": round(median_pearson(dropped), 3), "denoised_pearson": round(median_pearson(denoised), 3),
               "seconds": round(seconds, 1)}
    print(f"denoise {data.name} {slice_id} (50% of non-zeros dropped, t = {time_fraction}): median per-gene Pearson with "
          f"the undropped values {figures['denoised_pearson']} (dropped input {figures['input_pearson']}), {seconds:.0f} s", flush=True)
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default="results", type=Path)
    p.add_argument("--target-scale", type=float, default=1.0)
    p.add_argument("--denoise-time", type=float, default=0.2)
    # the pipeline's sampling settings (config/config.yaml), not the model's own defaults
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--num-samples", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(2)
    starmap = args.results / "starmap_mpfc"
    summary = {}
    with tempfile.TemporaryDirectory() as tmp:
        summary.update(conditional_and_target(starmap / "model/model.ckpt", starmap, "20180424_BZ14_control", args.target_scale,
                                              Path(tmp), ("--steps", str(args.steps), "--num-samples", str(args.num_samples))))
    for dataset, slice_id in (("starmap_mpfc", "20180424_BZ14_control"), ("bdtnp_drosophila", "slab2")):
        directory = args.results / dataset
        if (directory / "model/model.ckpt").is_file():
            figures = denoising(directory / "model/model.ckpt", directory, slice_id, args.denoise_time)
            summary.update({f"denoise_{dataset}_{k}": v for k, v in figures.items()})
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
