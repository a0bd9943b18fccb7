"""Settings of the smoothing over given expression (alphastomics.expression_graph), scored on every fold.

For each fold that `benchmarks/every_slice.py` ran (its trained model and held-out slice), the
held-out slice is sampled once in `expr_to_pos` and `impute` without smoothing (the model's own
sampling settings otherwise), then smoothed with each setting of a grid and scored as `evaluate`
scores the sample: expr_to_pos's consensus layout by distance Spearman (median over cells),
kNN@10 and the spread of local density against the true slice's (tissue-likeness: smoothing
pulls alike cells together); impute's posterior mean by the median over hidden genes of the
Spearman correlation over cells. Settings are judged on fold means, per dataset, never on one
slice.

    python benchmarks/expression_graph.py                       # the folds under results/every_slice
    python benchmarks/expression_graph.py --out results/expression_graph --datasets bdtnp_drosophila

Writes `<out>/folds.tsv` (every fold and setting) and `<out>/summary.tsv` (fold means per dataset);
prints the summary and, last, one line of JSON: per dataset, the unsmoothed and the default
setting's fold means.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alphastomics.config import SamplingConfig  # noqa: E402
from alphastomics.expression_graph import neighbour_graph, smooth  # noqa: E402
from alphastomics.io.sample_file import EXPR_PRED_MEAN, HELDOUT, SPATIAL, SPATIAL_PRED_CONSENSUS, dense, measured_genes  # noqa: E402
from alphastomics.layout import matched_spread  # noqa: E402
from alphastomics.metrics.expression import spearman_per_column  # noqa: E402
from alphastomics.metrics.geometry import distance_metrics, local_density_spread  # noqa: E402
from alphastomics.metrics.neighbourhoods import knn_preservation  # noqa: E402
from alphastomics.sample import sample_slice  # noqa: E402

DEFAULTS = SamplingConfig()
NEIGHBOURS = (5, 10, 20)
COMPONENTS = (10, 30)
STEPS = {"expr_to_pos": (0, 3, 5, 10, 20, 30), "impute": (0, 1, 3, 5, 10)}


def layout_scores(true: np.ndarray, layout: np.ndarray) -> dict[str, float]:
    return {"distance_spearman_median": distance_metrics(true, layout, [0.1])[0]["distance_spearman_median"],
            "knn_preservation_k10": knn_preservation(true, layout, [10])[0]["knn_preservation_k10"],
            "density_spread_ratio": local_density_spread(layout) / local_density_spread(true)}


def impute_scores(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {"expr_mean_spearman_gene_median": float(np.nanmedian(spearman_per_column(true, predicted)))}


def fold_rows(fold: dict, results: Path) -> list[dict]:
    """Every grid setting's scores on one fold."""
    data_dir = results / fold["fold_dataset"]
    checkpoint = data_dir / "model" / "model.ckpt"
    rows = []
    for mode in ("expr_to_pos", "impute"):
        adata = sample_slice(checkpoint, data_dir, fold["slice"], mode, progress=False, expression_graph={"steps": 0})
        hidden = adata.var[HELDOUT].to_numpy(bool) if mode == "impute" else np.zeros(adata.n_vars, bool)
        expression = dense(adata.X).astype(np.float64)
        features = expression[:, measured_genes(adata) & ~hidden]  # the given genes, as sampling builds its graph
        true = np.asarray(adata.obsm[SPATIAL], np.float64)
        for neighbours, components in itertools.product(NEIGHBOURS, COMPONENTS):
            graph = neighbour_graph(features, neighbours, components)
            for steps in STEPS[mode]:
                if mode == "expr_to_pos":
                    layout = np.asarray(adata.obsm[SPATIAL_PRED_CONSENSUS], np.float64)
                    scores = layout_scores(true, matched_spread(smooth(layout, graph, steps), layout[None]))
                else:
                    predicted = dense(adata.layers[EXPR_PRED_MEAN])[:, hidden].astype(np.float64)
                    scores = impute_scores(expression[:, hidden], smooth(predicted, graph, steps))
                rows.append({**fold, "mode": mode, "neighbours": neighbours, "components": components, "steps": steps, **scores})
    return rows


def is_default(row: pd.Series) -> bool:
    steps = DEFAULTS.smoothing_steps(row["mode"])
    return (row["neighbours"], row["components"], row["steps"]) == (DEFAULTS.expression_graph_neighbours,
                                                                    DEFAULTS.expression_graph_components, steps)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--every-slice", default="results/every_slice", help="the every-slice run's output (folds.json)")
    p.add_argument("--results", default="results", help="where the folds' results lie")
    p.add_argument("--datasets", nargs="*", default=None, help="only these datasets (default: every fold run)")
    p.add_argument("--out", default="results/expression_graph")
    args = p.parse_args()
    folds = json.loads((Path(args.every_slice) / "folds.json").read_text())
    results = Path(args.results)
    folds = [f for f in folds if (args.datasets is None or f["dataset"] in args.datasets)
             and (results / f["fold_dataset"] / "model" / "model.ckpt").is_file()]
    if not folds:
        sys.exit(f"{args.every_slice}: no fold with a trained model under {results} (run benchmarks/every_slice.py first)")
    started, rows = time.time(), []
    for i, fold in enumerate(folds, 1):
        rows += fold_rows(fold, results)
        print(f"[{i}/{len(folds)}] {fold['fold_dataset']} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    keys = ["dataset", "mode", "neighbours", "components", "steps"]
    metrics = [c for c in table.columns if c not in {*keys, "fold_dataset", "variant", "slice"}]
    summary = table.groupby(keys)[metrics].mean().reset_index()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("folds.tsv", table), ("summary.tsv", summary)):
        frame.to_csv(out / f"{name}.part", sep="\t", index=False)
        (out / f"{name}.part").replace(out / name)
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        for mode in ("expr_to_pos", "impute"):
            part = summary[summary["mode"] == mode].dropna(axis=1, how="all")
            print(part.pivot_table(index=["neighbours", "components", "steps"], columns="dataset",
                                   values=[m for m in metrics if m in part]).round(4).to_string(), "\n")
    headline = {}
    for (dataset, mode), part in summary.groupby(["dataset", "mode"]):
        unsmoothed = part[part["steps"] == 0].iloc[0]
        default = part[part.apply(is_default, axis=1)].iloc[0]
        for metric in metrics:
            if not np.isnan(default[metric]):
                headline[f"{dataset}.{mode}.{metric}"] = {"unsmoothed": round(float(unsmoothed[metric]), 4),
                                                          "default": round(float(default[metric]), 4)}
    print(json.dumps({"folds": len(folds), "wall_s": round(time.time() - started), **headline}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
