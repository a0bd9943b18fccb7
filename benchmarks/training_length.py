#!/usr/bin/env python
"""Quality against training length, training seed and model size: does a longer run, or the full
model, generate better tissue on the held-out slices?

    python benchmarks/training_length.py --steps 1500 3000 --seeds 0            # CPU, about 30 min
    python benchmarks/training_length.py --accelerator gpu --steps 1500 3000 5000 --seeds 0 1 2 \\
        --full-steps 3600 --parallel 4 --device cuda                          # one GPU, about 10 min

Run it after the pipeline (it reads ``results/<dataset>/{manifest.json,shards,settings}``). For
each dataset of ``--datasets``, every variant is trained by the production ``alphastomics train``
(one process each, ``--parallel`` at a time: at the demo's size a GPU is bound by kernel launches,
so several runs share one GPU at almost their own speed):

* ``demo_<steps>_s<seed>``: the demo's settings (``settings/train.yaml``) with ``training.max_steps``
  and ``training.seed`` set, for every ``--steps`` x ``--seeds``; the demo's own run is
  ``demo_1500_s0``, the baseline the others stand beside;
* ``full_<steps>``: with ``--full-steps``, ``config/full.yaml``'s model, diffusion and loss laid over
  the demo's settings (its learning rate and weight average too; warm-up a tenth of the run).

Each model samples the dataset's first test slice in ``--modes`` with the pipeline's sampling
settings (the config's ``sampling`` section, as ``alphastomics sample`` gets them) and is scored by
``alphastomics evaluate``'s own function. Per variant it prints the figures issue 9's criteria name:
``expr_to_pos`` consensus distance Spearman, kNN@10 and extent ratios (lowest, highest), the draw's
Spearman and kNN@10, the consensus layout's median position error in a shared frame; ``pos_to_expr`` per-gene Pearson of
``expr_pred_mean``; ``joint`` composition L1 and expression energy distance.

The last line is one JSON object, ``{"training_length": {dataset: {variant: {figure: value}}}}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import torch
import yaml

from alphastomics.config import config_from_dict, load_config
from alphastomics.evaluate import evaluate_sample
from alphastomics.sample import sample_slice
from gpu_training import REPO, SECTIONS, cli, dataset_entry, overlay

FIGURES = {  # (mode, metric) -> the name printed and put in the JSON
    ("expr_to_pos", "consensus_distance_spearman_median"): "expr_to_pos_spearman",
    ("expr_to_pos", "consensus_knn_preservation_k10"): "expr_to_pos_knn10",
    ("expr_to_pos", "distance_spearman_median"): "expr_to_pos_draw_spearman",
    ("expr_to_pos", "knn_preservation_k10"): "expr_to_pos_draw_knn10",
    ("expr_to_pos", "consensus_position_error_median"): "expr_to_pos_position_error",
    ("pos_to_expr", "expr_mean_pearson_gene_median"): "pos_to_expr_gene_pearson",
    ("joint", "cell_type_composition_l1"): "joint_composition_l1",
    ("joint", "expr_energy_distance_pca"): "joint_energy_distance",
}


def variant_settings(demo: dict, full_yaml: dict, size: str, steps: int, seed: int) -> dict:
    """The training settings of one variant: the demo's, or config/full.yaml's laid over them."""
    body = overlay(demo, {k: v for k, v in full_yaml.items() if k in SECTIONS}) if size == "full" else demo
    training = dict(body["training"], max_steps=steps, seed=seed)
    if size == "full":  # full.yaml's warm-up belongs to 50,000 steps
        training["warmup_steps"] = min(training.get("warmup_steps", 0), steps // 10)
    training.pop("accelerator", None)  # given on the command line
    return {**{k: body[k] for k in SECTIONS if k in body}, "training": training}


def figures(table: pd.DataFrame, mode: str) -> dict[str, float]:
    own = table[table["method"] == "alphastomics"].set_index("metric")["value"]
    found = {name: round(float(own[metric]), 4) for (m, metric), name in FIGURES.items() if m == mode and metric in own}
    if mode == "expr_to_pos":
        extents = own[own.index.str.match(r"consensus_extent_ratio_axis\d")]
        if len(extents):
            found["expr_to_pos_extent_min"] = round(float(extents.min()), 4)
            found["expr_to_pos_extent_max"] = round(float(extents.max()), 4)
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results")
    p.add_argument("--datasets", nargs="+", default=["starmap_mpfc", "bdtnp_drosophila"])
    p.add_argument("--config", default="config/config.yaml", help="the config naming test slices, frames and sampling settings")
    p.add_argument("--full", default="config/full.yaml")
    p.add_argument("--steps", nargs="+", type=int, default=[1500, 3000], help="training lengths of the demo-size variants")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds of the demo-size variants")
    p.add_argument("--full-steps", type=int, default=0, help="also train the full size this many steps (0: not)")
    p.add_argument("--modes", nargs="+", default=["expr_to_pos", "pos_to_expr", "joint"])
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--device", default="cpu", help="torch device for sampling")
    p.add_argument("--parallel", type=int, default=1, help="training processes at a time")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads in all")
    p.add_argument("--out", default=None, help="keep the runs (models, logs, sample files) here (default: a temporary folder)")
    args = p.parse_args()

    config_path = REPO / args.config
    sampling = config_from_dict({"sampling": yaml.safe_load(config_path.read_text()).get("sampling", {})}).sampling
    full_yaml = yaml.safe_load((REPO / args.full).read_text())
    work = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="training_length_"))
    threads_each = max(1, args.threads // max(1, args.parallel))
    torch.set_num_threads(args.threads)
    summary: dict = {}

    for dataset in args.datasets:
        data_dir = (REPO / args.results / dataset).resolve()
        if not (data_dir / "settings" / "train.yaml").is_file():
            print(f"{dataset}: no {data_dir / 'settings' / 'train.yaml'} (run the pipeline first), skipped")
            continue
        entry = dataset_entry(config_path, data_dir)
        test, frame = entry["test_slices"], entry.get("coordinate_frame", "per_slice")
        evaluation = load_config(data_dir / "settings" / "evaluate.yaml").evaluation
        demo = yaml.safe_load((data_dir / "settings" / "train.yaml").read_text())
        variants = {f"demo_{steps}_s{seed}": ("demo", steps, seed) for steps in args.steps for seed in args.seeds}
        if args.full_steps:
            variants[f"full_{args.full_steps}"] = ("full", args.full_steps, 0)

        def train(name: str) -> tuple[str, int, float]:
            run_dir = work / dataset / name
            run_dir.mkdir(parents=True, exist_ok=True)
            settings = run_dir / "settings.yaml"
            settings.write_text(yaml.safe_dump(variant_settings(demo, full_yaml, *variants[name])))
            rc, wall = cli(["train", "--data", str(data_dir), "--config", str(settings), "--test-slices", *test,
                            "--val-slices", *entry.get("validation_slices", []), "--coordinate-frame", frame,
                            "--out", str(run_dir), "--accelerator", args.accelerator, "--devices", "1"],
                           run_dir / "train.log", threads_each)
            print(f"{dataset} {name}: trained in {wall:.0f} s (rc {rc}; log {run_dir / 'train.log'})", flush=True)
            return name, rc, wall

        with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            trained = list(pool.map(train, variants))

        rows = {}
        for name, rc, wall in trained:
            if rc != 0:
                rows[name] = {"failed": True}
                continue
            row = {"train_s": round(wall, 1)}
            for mode in args.modes:
                started = time.time()
                adata = sample_slice(work / dataset / name / "model.ckpt", data_dir, test[0], mode, steps=sampling.steps,
                                     seed=sampling.seed, device=args.device, dataset=dataset, num_samples=sampling.draws(mode),
                                     progress=False, sampler=sampling.sampler, posterior_mean_draws=sampling.posterior_mean_draws,
                                     expression_temperature=sampling.expression_temperature)
                adata.write_h5ad(work / dataset / name / f"{test[0]}.{mode}.h5ad")
                table, _ = evaluate_sample(adata, evaluation, dataset=dataset, reference_dir=data_dir)
                row.update(figures(table, mode))
                print(f"  {name} {mode}: {time.time() - started:.0f} s", flush=True)
            rows[name] = row
        frame_table = pd.DataFrame(rows)
        print(f"\n{dataset}, held-out slice {test[0]} (runs in {work / dataset})\n"
              f"{frame_table.to_string(float_format=lambda v: f'{v:.3f}')}\n", flush=True)
        summary[dataset] = rows

    print(json.dumps({"training_length": summary}))
    return 0 if all(not row.get("failed") for rows in summary.values() for row in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
