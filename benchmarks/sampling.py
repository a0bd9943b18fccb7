"""Sampling speed against quality, and sampling at size.

Two parts (``--part``, default both):

- ``quality``: the full ancestral sampler beside few-step samplers, on a held-out slice of the
  bundled data with a trained checkpoint, and the wall time of one step at 1k, 10k and 100k cells;
- ``scale``: the whole user path, ``alphastomics sample --data FILE.h5ad`` (read, sample, consensus
  layout, expression graph, write), on sections of 10k, 100k and 300k cells made from a real
  section (``--scale-source``: its cells resampled with replacement, tiled side by side with
  jittered coordinates, so density and expression stay real). Each size runs in a fresh process:
  wall and CPU time of the command, and its peak memory above the process's baseline once the
  model is loaded (kernel high-water mark reset through ``/proc/self/clear_refs``, as
  ``scaling.py`` measures). Few steps and one draw by default (``--scale-steps``, ``--scale-draws``):
  the cost per step is what grows with cells.

    python benchmarks/sampling.py                          # after the pipeline (results/starmap_mpfc)
    python benchmarks/sampling.py --checkpoint M.ckpt --data results/<dataset> --slice ID
    python benchmarks/sampling.py --part scale --checkpoint M.ckpt   # 10k, 100k, 300k cells (about 10 min on 2 cores)

Quality: ``expr_to_pos`` median distance-row Spearman and kNN@10 preservation, each averaged over
all draws (one draw's kNN@10 of about 0.02 varies by 10-20% from seed to seed, which would decide
the comparison by itself); ``pos_to_expr`` median per-gene Pearson of the posterior mean
(``expr_pred_mean``). A setting's quality fraction is its worst ratio to the full sampler over
these three figures; its time fraction the ratio of wall times (same draws, one thread). The full
sampler is run a second time with other seeds: its quality fraction against the first run is the
noise floor of the comparison. The last line is one JSON object: the fewest steps (and which
sampler) that keep at least 95% of the full sampler's quality in at most 1/15 of its time, or the
best the tried settings reach when none does; with the scale part, ``scale`` (per size: wall_s,
cpu_s, peak_mb) and ``time_ratio_300k_10k``, ``memory_ratio_300k_10k`` against the linear 30
(target: within 1.3x of it, ``linear_within_1_3x``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import reset_peak, status_kb

from alphastomics.checkpoint import load_model
from alphastomics.io.shards import load_slice
from alphastomics.metrics import expression, geometry, neighbourhoods
from alphastomics.draws import draw_samples, known_batch

FEW_STEPS = (10, 25, 50, 100)
SIZES = (1_000, 10_000, 100_000)
SCALE_SIZES = (10_000, 100_000, 300_000)
REPO = Path(__file__).resolve().parents[1]


def quality(model, data, sampler: str, steps: int | None, num_samples: int, seed: int) -> tuple[dict, float]:
    started = time.perf_counter()
    positional = draw_samples(model, known_batch(model, data, "expr_to_pos"), "expr_to_pos", num_samples, seed, steps, sampler,
                              progress=False)
    expressed = draw_samples(model, known_batch(model, data, "pos_to_expr"), "pos_to_expr", num_samples, seed, steps, sampler,
                             progress=False)
    seconds = time.perf_counter() - started
    true = data.coords[:, : data.n_dims]
    spearman, knn = [], []
    for generated in positional.coordinates[..., : data.n_dims]:
        distance, _, _ = geometry.distance_metrics(true, generated, [0.1])
        spearman.append(distance["distance_spearman_median"])
        knn.append(neighbourhoods.knn_preservation(true, generated, [10])[0]["knn_preservation_k10"])
    measured = data.gene_mask.astype(bool)
    pearson = expression.pearson_per_column(data.expression[:, measured], expressed.expected_expression[:, measured])
    return {"distance_spearman_median": float(np.mean(spearman)), "knn_preservation_k10": float(np.mean(knn)),
            "posterior_mean_pearson_gene_median": float(np.nanmedian(pearson))}, seconds


@torch.no_grad()
def seconds_per_step(model, n_cells: int, repeats: int = 2) -> float:
    """One network evaluation (= one sampling step of one draw) on a synthetic slice of ``n_cells``."""
    from alphastomics.data.batch import SliceBatch

    g = torch.Generator().manual_seed(0)
    channels = model.codec.num_channels
    batch = SliceBatch(torch.randn(1, n_cells, channels, generator=g), torch.ones(1, n_cells, channels),
                       torch.randn(1, n_cells, 3, generator=g) * torch.tensor([1.0, 1.0, 0.0]), torch.ones(1, n_cells, dtype=torch.bool),
                       torch.ones(1, len(model.genes)), torch.tensor([[1.0, 1.0, 0.0]]))
    t = torch.tensor([model.schedule.steps // 2])
    ab = model.schedule.alpha_bar("position")[t]
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        model.network(batch.expression, batch.positions, t, t, ab, ab, batch.node_mask, batch.gene_mask, batch.dim_mask)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


# scale: the user path at 10k-300k cells, one fresh process per size
# ------------------------------------------------------------------------------------------------
def tiled_section(source: Path, n_cells: int, out: Path, seed: int = 0) -> None:
    """``n_cells`` cells made from the real section in ``source``: cells drawn with replacement,
    laid out tile by tile (each tile a copy of the section's extent, side by side on a square
    grid), coordinates jittered by a tenth of the typical cell spacing so no two cells coincide."""
    import anndata as ad
    from scipy.spatial import cKDTree

    real = ad.read_h5ad(source)
    coords = np.asarray(real.obsm["spatial"], dtype=np.float64)[:, :2]
    spacing = float(np.median(cKDTree(coords).query(coords, k=2)[0][:, 1]))
    extent = coords.max(0) - coords.min(0) + spacing
    rng = np.random.default_rng(seed)
    tiles = int(np.ceil(n_cells / real.n_obs))
    side = int(np.ceil(np.sqrt(tiles)))
    picks, offsets = [], []
    for tile in range(tiles):
        take = min(real.n_obs, n_cells - tile * real.n_obs)
        picks.append(rng.integers(0, real.n_obs, take))
        offsets.append(np.repeat([[tile % side, tile // side]], take, axis=0) * extent)
    picks, offsets = np.concatenate(picks), np.concatenate(offsets)
    big = real[picks].copy()
    big.obs_names = [f"cell{i}" for i in range(n_cells)]
    big.obsm["spatial"] = coords[picks] + offsets + rng.normal(scale=spacing / 10, size=(n_cells, 2))
    big.obs = big.obs[[]]
    big.write_h5ad(out)


def scale_worker(args) -> None:
    """One size: load the model, reset the memory high-water mark, run the sample command."""
    from alphastomics.cli import main as cli_main

    load_model(args.checkpoint)  # imports and the model's memory belong to the baseline
    reset_peak()
    baseline_kb = status_kb("VmRSS") or 0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, wall0 = usage.ru_utime + usage.ru_stime, time.perf_counter()
    code = cli_main(["--threads", str(args.threads), "sample", "--checkpoint", args.checkpoint, "--data", args.scale_worker,
                     "--mode", args.scale_mode, "--steps", str(args.scale_steps), "--num-samples", str(args.scale_draws),
                     "--out", args.scale_out])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak_kb = status_kb("VmHWM") or 0
    print("RESULT " + json.dumps({"exit": code, "wall_s": round(time.perf_counter() - wall0, 2),
                                  "cpu_s": round(usage.ru_utime + usage.ru_stime - cpu0, 2),
                                  "peak_mb": round((peak_kb - baseline_kb) / 1024, 1)}))


def scale_part(args) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="alphastomics-sampling-scale-") as tmp:
        for n in args.scale_sizes:
            section, out = Path(tmp) / f"section_{n}.h5ad", Path(tmp) / f"sampled_{n}.h5ad"
            tiled_section(Path(args.scale_source), n, section)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--scale-worker", str(section), "--scale-out", str(out),
                   "--checkpoint", args.checkpoint, "--scale-mode", args.scale_mode, "--scale-steps", str(args.scale_steps),
                   "--scale-draws", str(args.scale_draws), "--threads", str(args.threads)]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
            env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            results[n] = json.loads(line[len("RESULT "):]) if line else {"error": f"exit {done.returncode}: {done.stderr[-500:]}"}
            print(f"{args.scale_mode} at {n:>7,} cells ({args.scale_steps} steps, {args.scale_draws} draw(s)): {results[n]}", flush=True)
            section.unlink(missing_ok=True)
    summary = {"scale": {str(n): r for n, r in results.items()}, "scale_mode": args.scale_mode,
               "scale_steps": args.scale_steps, "scale_draws": args.scale_draws}
    small, large = min(results), max(results)
    if all("cpu_s" in results[n] for n in (small, large)) and large > small:
        linear = large / small
        time_ratio = results[large]["cpu_s"] / results[small]["cpu_s"]
        memory_ratio = results[large]["peak_mb"] / max(results[small]["peak_mb"], 1e-9)
        summary.update({f"time_ratio_{large // 1000}k_{small // 1000}k": round(time_ratio, 2),
                        f"memory_ratio_{large // 1000}k_{small // 1000}k": round(memory_ratio, 2),
                        "linear_ratio": linear,
                        "linear_within_1_3x": bool(time_ratio <= 1.3 * linear and memory_ratio <= 1.3 * linear)})
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="results/starmap_mpfc/model/model.ckpt")
    p.add_argument("--data", default="results/starmap_mpfc")
    p.add_argument("--slice", default="20180424_BZ14_control")
    p.add_argument("--num-samples", type=int, default=8, help="draws per setting, scored each and averaged (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    p.add_argument("--part", choices=("quality", "scale", "both"), default="both")
    p.add_argument("--scale-sizes", type=int, nargs="*", default=list(SCALE_SIZES))
    p.add_argument("--scale-source", default=str(REPO / "resources/starmap_mpfc/starmap_mpfc_20180424_BZ14_control.h5ad"),
                   help="the real section the large sections are made from (raw counts, obsm['spatial'])")
    p.add_argument("--scale-mode", default="expr_to_pos", choices=("expr_to_pos", "pos_to_expr", "impute", "joint"))
    p.add_argument("--scale-steps", type=int, default=2)
    p.add_argument("--scale-draws", type=int, default=1)
    p.add_argument("--scale-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--scale-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.scale_worker:
        scale_worker(args)
        return
    if args.part == "scale":
        print(json.dumps(scale_part(args)))
        return
    model = load_model(args.checkpoint)
    data = load_slice(args.data, args.slice)
    total = model.schedule.steps

    full, full_seconds = quality(model, data, "ancestral", None, args.num_samples, args.seed)
    rows = [("ancestral", total, full, full_seconds)]
    other_seeds = args.seed + 1000
    rows.append(("ancestral", total, *quality(model, data, "ancestral", None, args.num_samples, other_seeds)))
    for sampler in ("ddim", "ancestral"):
        for steps in FEW_STEPS:
            if steps < total:
                q, s = quality(model, data, sampler, steps, args.num_samples, args.seed)
                rows.append((sampler, steps, q, s))

    print(f"slice {args.slice}: {data.expression.shape[0]} cells, {args.num_samples} draws, {args.threads} thread(s); "
          f"the second full row is the full sampler again with seeds from {other_seeds} (the noise floor)")
    print(f"{'sampler':<10}{'steps':>6}{'spearman':>10}{'knn@10':>8}{'pearson':>9}{'quality':>9}{'seconds':>9}{'time':>7}")
    results = []
    for sampler, steps, q, s in rows:
        fraction = min(q[k] / full[k] for k in full if full[k] > 0)
        results.append({"sampler": sampler, "steps": steps, "quality_fraction": round(fraction, 3),
                        "time_fraction": round(s / full_seconds, 4), **{k: round(v, 4) for k, v in q.items()}})
        print(f"{sampler:<10}{steps:>6}{q['distance_spearman_median']:>10.3f}{q['knn_preservation_k10']:>8.3f}"
              f"{q['posterior_mean_pearson_gene_median']:>9.3f}{fraction:>9.2f}{s:>9.1f}{s / full_seconds:>7.3f}")

    per_step = {n: seconds_per_step(model, n) for n in args.sizes}
    for n, s in per_step.items():
        print(f"one step (one draw) at {n:>7,} cells: {s:.3f} s")

    noise_floor = results[1]["quality_fraction"]
    few = results[2:]
    meeting = [r for r in few if r["quality_fraction"] >= 0.95 and r["time_fraction"] <= 1 / 15]
    best = min(meeting, key=lambda r: (r["steps"], r["time_fraction"])) if meeting else \
        max(few, key=lambda r: (r["quality_fraction"] >= 0.95, -r["time_fraction"] if r["quality_fraction"] >= 0.95 else r["quality_fraction"]))
    scale = scale_part(args) if args.part == "both" else {}
    print(json.dumps({**scale, "steps": best["steps"], "sampler": best["sampler"], "quality_fraction": best["quality_fraction"],
                      "time_fraction": best["time_fraction"], "target_met": bool(meeting), "full_steps": total,
                      "full_sampler_seed_to_seed_quality_fraction": noise_floor, "num_samples": args.num_samples,
                      "seconds_per_step": {str(n): round(s, 4) for n, s in per_step.items()}}))


if __name__ == "__main__":
    main()
