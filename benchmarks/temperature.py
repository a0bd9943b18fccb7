"""Expression temperature of the ancestral sampler (sampling.expression_temperature), measured on
the held-out slices of trained models.

    python benchmarks/temperature.py          # after the pipeline: results/starmap_mpfc, results/bdtnp_drosophila
    python benchmarks/temperature.py --results results --datasets starmap_mpfc seqfish_mouse_embryo \\
        --temperatures 1.0 0.9 0.8 --seeds 0 4

For each dataset with a model under ``--results``, its (first) held-out slice is sampled in
``joint`` at each temperature with the same seeds (``--num-samples`` draws each, the pipeline's
4 by default) and scored by ``alphastomics evaluate``'s own function, with the real training
slices as the reference rows: expression energy distance (PCA of the training cells), cell-type
composition L1 (datasets with cell types), the distance-distribution Wasserstein distance (shape),
the per-gene std ratio, and the first three for the nearest real training slice. All means over
the draws. Also ``pos_to_expr``: the per-gene std ratio and the zero-fraction difference of the
first draw.

The last line is one JSON object: per dataset and temperature, the headline figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from alphastomics.config import EvaluationConfig
from alphastomics.evaluate import evaluate_sample
from alphastomics.io.manifest import load_manifest
from alphastomics.references import REAL_PREFIX
from alphastomics.sample import sample_slice
from common import add_model_arguments, trained_models

JOINT = ("expr_energy_distance_pca", "cell_type_composition_l1", "distance_wasserstein_unit_rms", "expr_std_ratio_median")
POS_TO_EXPR = ("expr_std_ratio_median", "expr_zero_fraction_abs_diff")
DISTANCES = ("expr_energy_distance_pca", "cell_type_composition_l1", "distance_wasserstein_unit_rms")  # lower is closer


def held_out_slice(data_dir: Path) -> str:
    """The first slice of the dataset its model neither trained nor validated on."""
    training = json.loads((data_dir / "model" / "training.json").read_text())
    seen = set(training["train_slices"]) | set(training["validation_slices"])
    return next(s for s in load_manifest(data_dir)["slices"] if s not in seen)


def scores(adata, data_dir: Path, metrics: tuple[str, ...]) -> tuple[dict, dict]:
    table, _ = evaluate_sample(adata, EvaluationConfig(), reference_dir=data_dir)
    own = table[table["method"] == "alphastomics"].set_index("metric")["value"]
    real = table[table["method"].str.startswith(REAL_PREFIX)]
    nearest = {}
    for metric in (m for m in metrics if m in DISTANCES):
        values = real[real["metric"] == metric]["value"]
        if len(values):
            nearest[metric] = float(values.min())
    return {m: float(own[m]) for m in metrics if m in own}, nearest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--temperatures", nargs="+", type=float, default=[1.0, 0.9, 0.8])
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="first seed of each set of draws")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()

    summary: dict = {}
    for dataset, data_dir, checkpoint in trained_models(args):
        slice_id = held_out_slice(data_dir)
        print(f"\n{dataset}, held-out slice {slice_id}")
        rows = []
        for temperature in args.temperatures:
            for seed in args.seeds:
                started = time.time()
                joint = sample_slice(checkpoint, data_dir, slice_id, "joint", steps=args.steps, seed=seed,
                                     num_samples=args.num_samples, progress=False, expression_temperature=temperature)
                own, nearest = scores(joint, data_dir, JOINT)
                p2e = sample_slice(checkpoint, data_dir, slice_id, "pos_to_expr", steps=args.steps, seed=seed, num_samples=1,
                                   progress=False, posterior_mean_draws=1, expression_temperature=temperature)
                p2e_own, _ = scores(p2e, data_dir, POS_TO_EXPR)
                rows.append({"temperature": temperature, "seed": seed,
                             **{f"joint_{k}": v for k, v in own.items()},
                             **{f"pos_to_expr_{k}": v for k, v in p2e_own.items()},
                             **{f"nearest_real_{k}": v for k, v in nearest.items()},
                             "seconds": round(time.time() - started, 1)})
                print("  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()), flush=True)
        table = pd.DataFrame(rows)
        means = table.drop(columns=["seed", "seconds"]).groupby("temperature").mean()
        print(f"\n{dataset}: means over seeds, by temperature\n{means.T.to_string(float_format=lambda v: f'{v:.3f}')}")
        summary[dataset] = {str(t): {k: round(float(v), 4) for k, v in row.items() if pd.notna(v)} for t, row in means.iterrows()}
    print(json.dumps({"expression_temperature": summary}))


if __name__ == "__main__":
    main()
