#!/usr/bin/env python
"""Scaling benchmark: time and peak memory of ONE training step versus the number of cells N.

Two variants of the default model (``ModelConfig()``: hidden 128, 4 heads, 4 layers; 500 genes):

* ``alphastomics`` -- the production code path: linear attention, and the distance loss that is
  exact up to ``loss.exact_distance_max_cells`` (4,096) cells and the kNN + random-pair estimate
  above.
* ``softmax``      -- the same model with quadratic softmax attention and the exact O(N^2) distance
  loss at every N (the baseline). Sizes whose estimated memory exceeds ``--memory-budget-gb`` are
  skipped and reported as such.

One step = ``DiffusionModule.compute_losses(batch)`` (noising, network, expression and distance
losses; regime "both modalities noised", so both losses run) followed by ``loss.backward()``, on a
batch of one synthetic slice (clustered 2D or 3D coordinates, cluster-dependent expression), on CPU.

Every (variant, N) runs in a fresh subprocess. Memory is the step's *peak resident memory above
the process baseline*: after imports, model construction and a ``gc.collect()``, the kernel's RSS
high-water mark is reset (``/proc/self/clear_refs`` <- 5) and the current RSS recorded; after the
warm-up and timed steps, peak = VmHWM (``/proc/self/status``) minus that baseline. It therefore
includes the synthetic input batch (O(N)), the autograd graph, gradients and all temporaries.
(If the high-water mark cannot be reset, ``getrusage().ru_maxrss`` is used instead and the value
is flagged.) Time is the median of ``--repeats`` timed steps after one warm-up step (at N >= 65,536,
``--repeats-large`` timed steps), both wall-clock and process CPU time (user + sys). Measurements use
one thread by default, and ``time_ratio_64k_4k`` uses CPU time (``--time-metric wall`` for
wall-clock): on a shared machine wall-clock measures the neighbours' load as much as the step.

The last line of output is one JSON object (``time_ratio_64k_4k``, ``memory_ratio_64k_4k`` and the
per-N numbers). Usage::

    .venv/bin/python benchmarks/scaling.py                       # 1k, 4k, 16k, 64k
    .venv/bin/python benchmarks/scaling.py --sizes 1000 4096 --repeats 5
    .venv/bin/python benchmarks/scaling.py --profile 65536       # where the time goes at one N
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import reset_peak, status_kb

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SIZES = [1024, 4096, 16384, 65536]
VARIANTS = ("alphastomics", "softmax", "linear_sampled")
LABELS = {
    "alphastomics": "AlphaSTomics (linear + sampled dist.)",
    "softmax": "softmax + exact dist. (baseline)",
    "linear_sampled": "linear + sampled dist. at every N",
}


# ------------------------------------------------------------------------------------------------
# child: one (variant, N) measurement
# ------------------------------------------------------------------------------------------------
def synthetic_batch(n: int, genes: int, dim: int, seed: int = 0):
    """One slice: cells in Gaussian clusters (spatial domains) whose expression depends on the cluster."""
    import torch

    from alphastomics.data.batch import SliceBatch

    g = torch.Generator().manual_seed(seed)
    clusters = max(4, min(64, n // 500))
    centres = torch.rand(clusters, 3, generator=g) * 10.0
    label = torch.randint(0, clusters, (n,), generator=g)
    pos = centres[label] + torch.randn(n, 3, generator=g) * 0.6
    if dim == 2:
        pos[:, 2] = 0.0
    pos = pos - pos.mean(0, keepdim=True)
    pos = pos / pos.pow(2).sum(-1).mean().sqrt()  # centred, unit RMS radius (model space)
    programmes = torch.randn(clusters, genes, generator=g)
    expr = programmes[label] + 0.5 * torch.randn(n, genes, generator=g)
    expr = (expr - expr.mean(0)) / expr.std(0).clamp(min=1e-6)
    dim_mask = torch.tensor([[1.0, 1.0, 1.0 if dim == 3 else 0.0]])
    return SliceBatch(
        expression=expr[None].float(),
        expression_target=torch.ones(1, n, genes),
        positions=pos[None].float() * (3 ** 0.5 if dim == 3 else 2 ** 0.5),  # per-axis spread ~1
        node_mask=torch.ones(1, n, dtype=torch.bool),
        gene_mask=torch.ones(1, genes),
        dim_mask=dim_mask,
    )


def build_module(variant: str, genes: int):
    from alphastomics.config import Config
    from alphastomics.model.network import AlphaSTomicsNet
    from alphastomics.train import DiffusionModule

    config = Config().validate()  # default model: hidden 128, 4 heads, 4 layers
    if variant == "softmax":
        config.loss.exact_distance_max_cells = 1 << 62  # exact O(N^2) distance loss at every N
    elif variant == "linear_sampled":
        config.loss.exact_distance_max_cells = 0  # diagnostic: the sampled estimate even at small N
    gene_names = [f"g{i}" for i in range(genes)]
    # one channel per gene (no zero-inflated genes in the synthetic data), per-slice frame
    codec = {"code": "zero_aware", "mean": [0.0] * genes, "std": [1.0] * genes, "floor": [-1e9] * genes,
             "zero_inflated": [False] * genes}
    frame = {"kind": "per_slice", "density_scale": {"2": 1.0, "3": 1.0}}
    module = DiffusionModule(config.to_dict(), gene_names, codec, frame)
    if variant == "softmax":
        c = module.config
        module.network = AlphaSTomicsNet(c.model, list(range(genes)), genes, c.diffusion.diffusion_steps, attention="softmax")
    module.train()
    return module


def child_main(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    module = build_module(args.variant, args.genes)
    regimes = torch.zeros(1, dtype=torch.long)  # regime BOTH: expression and positions noised
    generator = torch.Generator().manual_seed(0)
    gc.collect()
    reset_ok = reset_peak()
    base_kb = status_kb("VmRSS") or 0

    batch = synthetic_batch(args.n, args.genes, args.dim, seed=1)

    cpu_times, sys_times = [], []

    def step() -> tuple[float, dict]:
        module.zero_grad(set_to_none=True)
        t0, c0 = time.perf_counter(), os.times()
        losses = module.compute_losses(batch, generator, regimes=regimes)
        losses["loss"].backward()
        elapsed = time.perf_counter() - t0
        c1 = os.times()
        cpu_times.append(c1.user - c0.user + c1.system - c0.system)
        sys_times.append(c1.system - c0.system)
        return elapsed, {k: float(v.detach()) for k, v in losses.items()}

    times = []
    warm, last = step()
    for _ in range(args.repeats):
        t, last = step()
        times.append(t)
    cpu_times.pop(0)  # warm-up
    sys_times.pop(0)
    if reset_ok:
        peak_kb = status_kb("VmHWM") or 0
        method = "VmHWM after clear_refs"
    else:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss (high-water mark not reset; includes import-time peak)"
    result = {
        "variant": args.variant,
        "n": args.n,
        "time_s": statistics.median(times),
        "times_s": times,
        "cpu_s": statistics.median(cpu_times),
        "sys_s": statistics.median(sys_times),
        "load_avg_1m": os.getloadavg()[0],
        "warmup_s": warm,
        "peak_mb": (peak_kb - base_kb) / 1024.0,
        "baseline_rss_mb": base_kb / 1024.0,
        "memory_method": method,
        "threads": torch.get_num_threads(),
        "losses": last,
    }
    print("RESULT " + json.dumps(result), flush=True)


def profile_main(args) -> None:
    """Operator-level breakdown of one AlphaSTomics step at one N (torch profiler, CPU)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from alphastomics.diffusion import losses as losses_mod

    if args.threads:
        torch.set_num_threads(args.threads)
    module = build_module(args.variant, args.genes)
    batch = synthetic_batch(args.profile, args.genes, args.dim, seed=1)
    regimes = torch.zeros(1, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    # Time the distance-loss pieces by wrapping them (monkeypatching only inside this process).
    timers: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            with record_function(name):
                out = fn(*a, **k)
            timers[name] = timers.get(name, 0.0) + time.perf_counter() - t0
            return out

        return wrapper

    losses_mod.knn_pair_keys = timed("knn_pair_keys(cKDTree+unique)", losses_mod.knn_pair_keys)
    import alphastomics.train as train_mod

    train_mod.distance_loss = timed("distance_loss(forward)", train_mod.distance_loss)
    net = module.network
    net.forward = timed("network(forward)", net.forward)

    def step():
        module.zero_grad(set_to_none=True)
        losses = module.compute_losses(batch, generator, regimes=regimes)
        t0 = time.perf_counter()
        losses["loss"].backward()
        timers["backward(all)"] = timers.get("backward(all)", 0.0) + time.perf_counter() - t0

    step()
    timers.clear()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        step()
    total = time.perf_counter() - t0
    print(f"\nProfile of one {args.variant} step at N={args.profile} ({total:.2f} s under the profiler):")
    for k, v in timers.items():
        print(f"  {k:<34s} {v:8.3f} s")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    print(prof.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=12))


# ------------------------------------------------------------------------------------------------
# parent: orchestration, table, ratios, JSON
# ------------------------------------------------------------------------------------------------
def estimate_softmax_gb(n: int, heads: int, layers: int, measured: dict[int, float]) -> float:
    """Memory of the quadratic baseline at N: scale the largest measured size by (N/N0)^2, else a
    formula. Per layer, nn.MultiheadAttention keeps ~2 (H, N, N) float32 maps (scores, softmax) plus
    the (N, N) head-averaged weights for backward; the exact distance loss ~6 (N, N) maps."""
    below = [m for m in measured if m < n]
    if below:
        n0 = max(below)
        return measured[n0] / 1024.0 * (n / n0) ** 2
    per_layer = (2 * heads + 2) * n * n * 4
    return (layers * per_layer + 6 * n * n * 4) * 1.25 / 1e9


def run_child(variant: str, n: int, repeats: int, args) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--child", "--variant", variant, "--n", str(n),
        "--repeats", str(repeats), "--genes", str(args.genes), "--dim", str(args.dim), "--threads", str(args.threads),
    ]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=args.child_timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"variant": variant, "n": n, "error": f"exit {proc.returncode}: " + " | ".join(tail)}


def fmt_n(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def ratio(results: dict, variant: str, key: str, big: int, small: int):
    a, b = results.get((variant, big), {}), results.get((variant, small), {})
    if key in a and key in b and b[key] > 0:
        return a[key] / b[key]
    return None


def parent_main(args) -> None:
    from alphastomics.config import ModelConfig

    mc = ModelConfig()
    sizes = sorted(args.sizes)
    print(
        f"AlphaSTomics scaling benchmark: one training step (forward + backward), batch of 1 slice, "
        f"{args.genes} genes, {args.dim}D coordinates, model hidden {mc.hidden_dim} / heads {mc.num_heads} / "
        f"layers {mc.num_layers}, CPU, torch threads {args.threads or 'default'}",
        flush=True,
    )
    print(
        f"time = median of {args.repeats} steps after 1 warm-up ({args.repeats_large} at N >= 65,536); "
        "memory = peak RSS above the post-build baseline (fresh process per row)",
        flush=True,
    )
    results: dict[tuple[str, int], dict] = {}
    started = time.perf_counter()
    for variant in args.variants:
        measured_gb: dict[int, float] = {}
        for n in sizes:
            if variant == "softmax":
                need = estimate_softmax_gb(n, mc.num_heads, mc.num_layers, measured_gb)
                if need > args.memory_budget_gb:
                    results[(variant, n)] = {"variant": variant, "n": n, "skipped": f"skipped (would need {need:.0f} GB)"}
                    print(f"  {variant:<13s} N={n:>6d}: skipped (would need {need:.0f} GB > budget {args.memory_budget_gb:g} GB)", flush=True)
                    continue
            repeats = args.repeats_large if n >= 65536 else args.repeats
            r = run_child(variant, n, repeats, args)
            results[(variant, n)] = r
            if "error" in r:
                print(f"  {variant:<13s} N={n:>6d}: FAILED {r['error']}", flush=True)
                continue
            measured_gb[n] = r["peak_mb"]
            print(
                f"  {variant:<13s} N={n:>6d}: {r['time_s']:8.3f} s  {r['peak_mb']:9.1f} MB  "
                f"(steps {', '.join(f'{t:.2f}' for t in r['times_s'])}; warm-up {r['warmup_s']:.2f})",
                flush=True,
            )
    wall = time.perf_counter() - started

    # Table.
    print()
    header = (
        f"{'variant':<38s} {'N':>7s} {'time/step (s)':>14s} {'CPU s/step':>11s} {'peak mem (MB)':>14s} "
        f"{'time/N (us)':>12s} {'mem/N (KB)':>11s} {'load':>5s}"
    )
    print(header)
    print("-" * len(header))
    for variant in args.variants:
        for n in sizes:
            r = results.get((variant, n), {})
            if "time_s" in r:
                print(
                    f"{LABELS[variant]:<38s} {n:>7d} {r['time_s']:>14.3f} {r['cpu_s']:>11.2f} {r['peak_mb']:>14.1f} "
                    f"{r['time_s'] / n * 1e6:>12.1f} {r['peak_mb'] * 1024 / n:>11.2f} {r['load_avg_1m']:>5.1f}"
                )
            else:
                print(f"{LABELS[variant]:<38s} {n:>7d} {r.get('skipped') or r.get('error', 'not run'):>40s}")
    print("-" * len(header))

    # Ratios.
    big, small = 65536, 4096
    summary = {
        "benchmark": "alphastomics-scaling",
        "device": "cpu",
        "threads": next((r["threads"] for r in results.values() if "threads" in r), None),
        "genes": args.genes,
        "dim": args.dim,
        "model": {"hidden_dim": mc.hidden_dim, "num_heads": mc.num_heads, "num_layers": mc.num_layers},
        "memory_measure": "peak RSS above post-build baseline, MB (VmHWM after clear_refs)",
        "time_measure": "time_s: median wall-clock s per step; cpu_s: median process CPU (user+sys) s per step",
        "time_metric": args.time_metric,
        "time_ratio_64k_4k": None,  # by --time-metric
        "memory_ratio_64k_4k": None,
        "targets": {"time_ratio_64k_4k": 20, "memory_ratio_64k_4k": 20},
        "wall_s": round(wall, 1),
    }
    print()
    for variant in args.variants:
        tkey = "cpu_s" if args.time_metric == "cpu" else "time_s"
        tr, mr = ratio(results, variant, tkey, big, small), ratio(results, variant, "peak_mb", big, small)
        wr = ratio(results, variant, "time_s", big, small)
        if tr is None and mr is None:
            # Report the largest available ratio instead (the baseline usually stops before 64k).
            done = [n for n in sizes if "time_s" in results.get((variant, n), {})]
            if len(done) >= 2:
                lo, hi = done[0], done[-1]
                t2, m2 = ratio(results, variant, tkey, hi, lo), ratio(results, variant, "peak_mb", hi, lo)
                print(
                    f"{LABELS[variant]}: 64k/4k not available; {args.time_metric}-time({fmt_n(hi)})/time({fmt_n(lo)}) = {t2:.1f}, "
                    f"memory({fmt_n(hi)})/memory({fmt_n(lo)}) = {m2:.1f} (N ratio {hi / lo:g}, quadratic would be {(hi / lo) ** 2:g})"
                )
            else:
                print(f"{LABELS[variant]}: 64k/4k not available")
            continue
        verdict = ""
        prefix = "" if variant == "alphastomics" else variant + "_"
        if variant == "alphastomics":
            ok = tr is not None and mr is not None and tr <= 20 and mr <= 20
            verdict = "  -> targets (<= 20 each) MET" if ok else "  -> targets (<= 20 each) MISSED"
            summary["time_ratio_64k_4k"] = round(tr, 3) if tr is not None else None
            summary["memory_ratio_64k_4k"] = round(mr, 3) if mr is not None else None
        else:
            summary[prefix + "time_ratio_64k_4k"] = round(tr, 3) if tr is not None else None
            summary[prefix + "memory_ratio_64k_4k"] = round(mr, 3) if mr is not None else None
        if wr is not None:
            summary[prefix + "wall_time_ratio_64k_4k"] = round(wr, 3)
        trs = f"{tr:.2f}" if tr is not None else "n/a"
        mrs = f"{mr:.2f}" if mr is not None else "n/a"
        other = "wall-clock" if args.time_metric == "cpu" else "CPU"
        orat = wr if args.time_metric == "cpu" else ratio(results, variant, "cpu_s", big, small)
        ors = f" ({other} ratio {orat:.2f})" if orat is not None else ""
        print(f"{LABELS[variant]}: {args.time_metric}-time(64k)/time(4k) = {trs}{ors}, memory(64k)/memory(4k) = {mrs}{verdict}")
    for variant in args.variants:
        rows = {}
        for n in sizes:
            r = results.get((variant, n), {})
            if "time_s" in r:
                rows[str(n)] = {
                    "time_s": round(r["time_s"], 4), "cpu_s": round(r["cpu_s"], 3), "sys_s": round(r["sys_s"], 3),
                    "peak_mb": round(r["peak_mb"], 1),
                }
            else:
                rows[str(n)] = {"skipped": r.get("skipped") or r.get("error", "not run")}
        summary[variant] = rows
    print(json.dumps(summary))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=DEFAULT_SIZES, help="cell counts (default 1024 4096 16384 65536)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per size after one warm-up (default 3)")
    p.add_argument("--repeats-large", type=int, default=2, help="timed steps at N >= 65,536 (default 2)")
    p.add_argument(
        "--variants", nargs="+", choices=VARIANTS, default=["alphastomics", "softmax"],
        help="default: alphastomics softmax; linear_sampled (diagnostic) forces the sampled distance loss at every N",
    )
    p.add_argument(
        "--time-metric", choices=("cpu", "wall"), default="cpu",
        help="time used for time_ratio_64k_4k: process CPU time per step (default; with one thread it is the "
        "step's own work, unaffected by other load on a shared machine) or wall-clock. Both are always printed.",
    )
    p.add_argument("--genes", type=int, default=500)
    p.add_argument("--dim", type=int, choices=(2, 3), default=2, help="coordinate dimension of the synthetic slice")
    p.add_argument(
        "--threads", type=int, default=1,
        help="torch/OpenMP threads per measurement (default 1; 0: torch default). One thread keeps the numbers "
        "reproducible on a shared machine: with 2 OpenMP threads and other load on the cores, barrier spin-waits "
        "multiplied the CPU time of a 1k-cell step ~11x.",
    )
    p.add_argument("--memory-budget-gb", type=float, default=16.0, help="skip baseline sizes estimated above this")
    p.add_argument("--child-timeout", type=float, default=600.0)
    p.add_argument("--profile", type=int, default=0, metavar="N", help="profile one step at N cells instead of benchmarking")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=VARIANTS, default="alphastomics", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=1024, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if args.child:
        child_main(args)
    elif args.profile:
        profile_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
