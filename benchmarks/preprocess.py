"""Benchmark ``alphastomics preprocess`` against a naive baseline on synthetic sparse h5ad files.

For each size (default 100k, 500k and 2M cells x 500 genes) a synthetic file is made with
``make_synthetic_h5ad.py`` (cached in --workdir), then, on that same file, each method runs as a
child process whose wall time and peak RSS (``os.wait4`` rusage of that child alone) are measured:

- alphastomics: ``alphastomics preprocess FILE --platform synthetic --out DIR --slice-key slice_id``
  (chunked, backed reading; library size + log1p; Parquet shards).
- baseline: ``scanpy.read_h5ad`` of the whole file, the same normalisation (normalize_total 1e4 +
  log1p), one dense DataFrame (a column per gene plus cell id, slice, x, y) and ``to_parquet``
  with zstd, i.e. what one writes without a streaming design.

Prints a table, then ONE line of JSON (last line) with speedup_500k, peak_rss_gb_2m and cells/s
and peak RSS per method and size. A baseline that would not fit in memory is skipped and
reported as such.

    python benchmarks/preprocess.py [--sizes 100000,500000,2000000] [--workdir /tmp/alphastomics-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_synthetic_h5ad import make_synthetic_h5ad  # noqa: E402

N_GENES = 500
# The baseline holds the dense matrix several times over (AnnData to dense array, DataFrame, Arrow
# table for Parquet); skip it where that estimate does not fit in the memory available now.
BASELINE_DENSE_COPIES = 3.5


def label(n_cells: int) -> str:
    return f"{n_cells // 1_000_000}m" if n_cells % 1_000_000 == 0 else f"{n_cells // 1000}k"


def run_child(command: list[str]) -> dict:
    """Run ``command``; return wall seconds and the peak RSS (GB) of that child alone."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr_chunks = []
    # read stderr while waiting so a chatty child never blocks on a full pipe
    for line in process.stderr:
        stderr_chunks.append(line)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        tail = b"".join(stderr_chunks[-20:]).decode(errors="replace")
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{tail}")
    return {"wall_s": wall, "peak_rss_gb": usage.ru_maxrss * 1024 / 1e9}  # ru_maxrss is in KiB on Linux


def alphastomics_command(h5ad: Path, out_dir: Path) -> list[str]:
    return [sys.executable, "-m", "alphastomics.cli", "preprocess", str(h5ad), "--platform", "synthetic",
            "--out", str(out_dir), "--slice-key", "slice_id", "--dataset", "synthetic"]


def baseline_command(h5ad: Path, out_file: Path) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--baseline-worker", str(h5ad), str(out_file)]


def baseline_worker(h5ad: str, out_file: str) -> None:
    """The naive way: whole file in memory, dense DataFrame, one to_parquet."""
    import numpy as np
    import pandas as pd
    import scanpy as sc

    adata = sc.read_h5ad(h5ad)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    frame = pd.DataFrame(adata.X.toarray(), index=adata.obs_names, columns=adata.var_names)
    frame["slice_id"] = adata.obs["slice_id"].astype(str).to_numpy()
    coords = np.asarray(adata.obsm["spatial"])
    frame["x"], frame["y"] = coords[:, 0], coords[:, 1]
    frame.to_parquet(out_file, compression="zstd")


def baseline_fits(n_cells: int) -> bool:
    needed = BASELINE_DENSE_COPIES * n_cells * N_GENES * 4
    return needed < 0.8 * psutil.virtual_memory().available


def bench_size(n_cells: int, workdir: Path, run_baseline: bool) -> dict:
    h5ad = workdir / f"synthetic_{label(n_cells)}.h5ad"
    if not h5ad.exists():
        print(f"making {h5ad} ...", file=sys.stderr, flush=True)
        make_synthetic_h5ad(h5ad, n_cells, N_GENES)
    result = {"n_cells": n_cells, "file_mb": h5ad.stat().st_size / 1e6}
    out_dir = workdir / f"shards_{label(n_cells)}"
    shutil.rmtree(out_dir, ignore_errors=True)
    result["alphastomics"] = run_child(alphastomics_command(h5ad, out_dir))
    shutil.rmtree(out_dir, ignore_errors=True)
    if run_baseline and baseline_fits(n_cells):
        out_file = workdir / f"baseline_{label(n_cells)}.parquet"
        result["baseline"] = run_child(baseline_command(h5ad, out_file))
        out_file.unlink(missing_ok=True)
    else:
        why = "disabled" if not run_baseline else f"needs ~{BASELINE_DENSE_COPIES * n_cells * N_GENES * 4 / 1e9:.0f} GB, more than 80% of available memory"
        result["baseline"] = {"skipped": why}
    for method in ("alphastomics", "baseline"):
        if "wall_s" in result[method]:
            result[method]["cells_per_s"] = n_cells / result[method]["wall_s"]
    if "cells_per_s" in result["baseline"]:
        result["speedup"] = result["alphastomics"]["cells_per_s"] / result["baseline"]["cells_per_s"]
        result["rss_ratio"] = result["baseline"]["peak_rss_gb"] / result["alphastomics"]["peak_rss_gb"]
    return result


def print_table(results: list[dict]) -> None:
    header = f"{'cells':>10} {'file MB':>8} | {'alphastomics c/s':>16} {'RSS GB':>7} | {'baseline c/s':>12} {'RSS GB':>7} | {'speedup':>7} {'RSS ratio':>9}"
    print(header)
    print("-" * len(header))
    for r in results:
        a, b = r["alphastomics"], r["baseline"]
        base = f"{b['cells_per_s']:>12,.0f} {b['peak_rss_gb']:>7.2f}" if "cells_per_s" in b else f"{'skipped':>12} {'-':>7}"
        ratio = f"{r['speedup']:>7.2f} {r['rss_ratio']:>9.2f}" if "speedup" in r else f"{'-':>7} {'-':>9}"
        print(f"{r['n_cells']:>10,} {r['file_mb']:>8.0f} | {a['cells_per_s']:>16,.0f} {a['peak_rss_gb']:>7.2f} | {base} | {ratio}")
    for r in results:
        if "skipped" in r["baseline"]:
            print(f"baseline at {r['n_cells']:,} cells skipped: {r['baseline']['skipped']}")


def summary(results: list[dict]) -> dict:
    out: dict = {}
    for r in results:
        tag = label(r["n_cells"])
        out[f"cells_per_s_alphastomics_{tag}"] = round(r["alphastomics"]["cells_per_s"], 1)
        out[f"peak_rss_gb_{tag}"] = round(r["alphastomics"]["peak_rss_gb"], 3)
        if "cells_per_s" in r["baseline"]:
            out[f"cells_per_s_baseline_{tag}"] = round(r["baseline"]["cells_per_s"], 1)
            out[f"peak_rss_gb_baseline_{tag}"] = round(r["baseline"]["peak_rss_gb"], 3)
            out[f"speedup_{tag}"] = round(r["speedup"], 3)
        else:
            out[f"baseline_{tag}"] = "skipped: " + r["baseline"]["skipped"]
    out.setdefault("speedup_500k", None)  # present even when 500k was not run
    out.setdefault("peak_rss_gb_2m", None)
    return out


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--baseline-worker":
        baseline_worker(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,500000,2000000", help="comma-separated cell counts")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/alphastomics-bench"), help="synthetic files and outputs")
    parser.add_argument("--no-baseline", action="store_true", help="time alphastomics only")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    for n_cells in (int(s) for s in args.sizes.split(",")):
        print(f"benchmarking {n_cells:,} cells ...", file=sys.stderr, flush=True)
        results.append(bench_size(n_cells, args.workdir, not args.no_baseline))
    print_table(results)
    print(json.dumps(summary(results)))


if __name__ == "__main__":
    main()
