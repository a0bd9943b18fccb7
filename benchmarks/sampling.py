"""Sampling speed against quality: the full ancestral sampler beside few-step samplers, on a held-out
slice of the bundled data with a trained checkpoint, and the wall time of one step at 1k, 10k and
100k cells.

    python benchmarks/sampling.py                          # after the pipeline (results/starmap_mpfc)
    python benchmarks/sampling.py --checkpoint M.ckpt --data results/<dataset> --slice ID

Quality: ``expr_to_pos`` median distance-row Spearman and kNN@10 preservation, each averaged over
all draws (one draw's kNN@10 of about 0.02 varies by 10-20% from seed to seed, which would decide
the comparison by itself); ``pos_to_expr`` median per-gene Pearson of the posterior mean
(``expr_pred_mean``). A setting's quality fraction is its worst ratio to the full sampler over
these three figures; its time fraction the ratio of wall times (same draws, one thread). The full
sampler is run a second time with other seeds: its quality fraction against the first run is the
noise floor of the comparison. The last line is one JSON object: the fewest steps (and which
sampler) that keep at least 95% of the full sampler's quality in at most 1/15 of its time, or the
best the tried settings reach when none does.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from alphastomics.checkpoint import load_model
from alphastomics.io.shards import load_slice
from alphastomics.metrics import expression, geometry, neighbourhoods
from alphastomics.draws import draw_samples, known_batch

FEW_STEPS = (10, 25, 50, 100)
SIZES = (1_000, 10_000, 100_000)


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="results/starmap_mpfc/model/model.ckpt")
    p.add_argument("--data", default="results/starmap_mpfc")
    p.add_argument("--slice", default="20180424_BZ14_control")
    p.add_argument("--num-samples", type=int, default=8, help="draws per setting, scored each and averaged (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
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
    print(json.dumps({"steps": best["steps"], "sampler": best["sampler"], "quality_fraction": best["quality_fraction"],
                      "time_fraction": best["time_fraction"], "target_met": bool(meeting), "full_steps": total,
                      "full_sampler_seed_to_seed_quality_fraction": noise_floor, "num_samples": args.num_samples,
                      "seconds_per_step": {str(n): round(s, 4) for n, s in per_step.items()}}))


if __name__ == "__main__":
    main()
