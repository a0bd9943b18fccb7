#!/usr/bin/env python
"""Benchmark ``alphastomics evaluate``: time of every metric on a large slice, on CPU.

A synthetic 2D slice (default 100,000 cells x 166 genes, like STARmap's panel) with tissue-like
structure: 15 cell types laid out in noisy layers, type-specific expression programs drawn as
Poisson counts and library-size normalised + log1p. The "generated" sample is the truth rotated,
mirrored and jittered, and the expression with Gaussian noise, in mode ``joint`` so that every
metric runs (expression, coordinates, neighbourhoods, Moran's I, clusters, label transfer).

Each size runs in a fresh subprocess (so peak memory is its own) and reports the wall time of
``evaluate_sample`` (all metrics, default ``EvaluationConfig``: slices above 20,000 cells use a
5,000-cell seeded sample for pairwise-distance metrics, clustering and expression label
transfer), the seconds of each metric family, and the process's peak RSS. A dense N x N float64
matrix at 100,000 cells would take 80 GB, so the peak RSS also shows none was built.

The last line of output is one JSON object with ``total_seconds_100k`` (or the first size) and
the per-size numbers; ``cpu_seconds_100k`` is the load-independent figure (evaluation runs one
thread, so its CPU time is its wall time on an idle machine). Usage::

    .venv/bin/python benchmarks/metrics.py                    # 100,000 cells
    .venv/bin/python benchmarks/metrics.py --sizes 20000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

N_GENES = 166
N_TYPES = 15


def synthetic_sample(n_cells: int, seed: int = 0):
    """Sample AnnData (docs/FORMATS.md layout, mode joint) of a layered synthetic tissue."""
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(seed)
    positions = rng.uniform(0, [12000, 6000], size=(n_cells, 2))
    # Layers along x with wavy boundaries, plus 25% of cells of a random type (interneurons, glia).
    layer = ((positions[:, 0] + 600 * np.sin(positions[:, 1] / 900)) / 12000 * N_TYPES).astype(int).clip(0, N_TYPES - 1)
    types = np.where(rng.uniform(size=n_cells) < 0.25, rng.integers(0, N_TYPES, n_cells), layer)
    programs = rng.gamma(0.6, 2.0, size=(N_TYPES, N_GENES))
    library = rng.lognormal(0, 0.4, size=(n_cells, 1))
    counts = rng.poisson(programs[types] * library * 3).astype(np.float32)
    expression = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)

    angle = 0.8
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) @ np.diag([1.0, -1.0])
    centre = positions.mean(0)
    generated_positions = (positions - centre) @ rotation.T + centre + rng.normal(scale=60, size=positions.shape)
    generated_expression = np.clip(expression + rng.normal(scale=0.6, size=expression.shape), 0, None).astype(np.float32)

    obs = pd.DataFrame({"slice_id": "synthetic", "platform": "synthetic",
                        "cell_type": pd.Categorical([f"type{t}" for t in types])}, index=[f"c{i}" for i in range(n_cells)])
    adata = ad.AnnData(X=expression, obs=obs, var=pd.DataFrame(index=[f"gene{g}" for g in range(N_GENES)]))
    adata.layers["expr_pred"] = generated_expression
    adata.obsm["spatial"] = positions.astype(np.float32)
    adata.obsm["spatial_pred"] = generated_positions.astype(np.float32)
    adata.var["measured"] = True
    adata.uns["alphastomics"] = {"mode": "joint", "method": "alphastomics", "dataset": "synthetic", "slice_id": "synthetic",
                                 "n_dims": 2, "generated": ["expression", "position"], "seed": seed}
    return adata


def run_one(n_cells: int) -> dict:
    """Evaluate one synthetic slice in this process; returns its timings."""
    from alphastomics.config import EvaluationConfig
    from alphastomics.evaluate import evaluate_sample

    adata = synthetic_sample(n_cells)
    config = EvaluationConfig()
    evaluate_sample(synthetic_sample(300, seed=1), config)  # imports and first-call set-up, not timed
    start, cpu_start = time.perf_counter(), time.process_time()
    table, details = evaluate_sample(adata, config)
    total, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    families: dict[str, float] = {}
    for name, how in details.items():
        family = _family(name)
        families[family] = max(families.get(family, 0.0), how["seconds"])  # metrics of one family share one timing
    return {
        "n_cells": n_cells,
        "n_metrics": len(table),
        "total_seconds": round(total, 2),
        # CPU time of this process: evaluation runs one BLAS/OpenMP thread, so on an idle machine this
        # is the wall time; on a shared one it is the figure that does not depend on other jobs.
        "cpu_seconds": round(cpu, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "family_seconds": families,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "sampled_cells_for_distances": details["distance_spearman_median"].get("sample_size", n_cells),
        "values": dict(zip(table["metric"], [round(float(v), 4) for v in table["value"]])),
    }


def _family(metric: str) -> str:
    for prefix, family in (("expr_", "expression"), ("procrustes", "procrustes+rssd"), ("rssd", "procrustes+rssd"),
                           ("distance_", "pairwise distances+contacts"), ("contact_", "pairwise distances+contacts"),
                           ("knn_", "knn preservation"), ("morans", "morans i"), ("nhood", "nhood enrichment"),
                           ("label_transfer_accuracy_spatial", "label transfer spatial"),
                           ("label_transfer_accuracy_expression", "label transfer expression"), ("leiden", "leiden clusters")):
        if metric.startswith(prefix):
            return family
    return metric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000], help="cells per synthetic slice")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_one(args.child)))
        return

    results = []
    for n in args.sizes:
        proc = subprocess.run([sys.executable, __file__, "--child", str(n)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode:
            sys.exit(f"benchmark at {n} cells failed:\n{proc.stderr[-4000:]}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(result)
        print(f"\n{n:,} cells: all {result['n_metrics']} metrics in {result['total_seconds']:.1f} s wall "
              f"({result['cpu_seconds']:.1f} s CPU, load average {result['load_average_1min']}), "
              f"peak RSS {result['peak_rss_gib']:.2f} GiB, distance metrics on {result['sampled_cells_for_distances']:,} cells")
        for family, seconds in sorted(result["family_seconds"].items(), key=lambda kv: -kv[1]):
            print(f"  {family:<28} {seconds:8.2f} s")

    headline = next((r for r in results if r["n_cells"] == 100_000), results[0])
    summary = {
        f"total_seconds_{headline['n_cells'] // 1000}k": headline["total_seconds"],
        f"cpu_seconds_{headline['n_cells'] // 1000}k": headline["cpu_seconds"],
        "load_average_1min": headline["load_average_1min"],
        "target_seconds": 60,
        "within_target_wall": headline["total_seconds"] < 60,
        "within_target_cpu": headline["cpu_seconds"] < 60,  # = wall time on an idle machine (one thread)
        f"peak_rss_gib_{headline['n_cells'] // 1000}k": headline["peak_rss_gib"],
        "cpu_cores": os.cpu_count(),
        "per_size": [{k: v for k, v in r.items() if k != "values"} for r in results],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
