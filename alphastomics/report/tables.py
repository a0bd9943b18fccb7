"""Metric tables of the report and the summary: categories, formatting, best values, headline columns.

Which value of a metric is better comes from one place, ``alphastomics.metrics.metric_direction``;
a metric it does not know gets no direction (and no best mark), never a guess.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from alphastomics import MODES
from alphastomics.metrics import metric_direction
from alphastomics.references import REAL_PREFIX
from alphastomics.report.inputs import MAIN_METHOD

DIRECTION_SOURCE = "alphastomics.metrics.METRIC_DIRECTION"

MODE_DESCRIPTION = {
    "expr_to_pos": "expression given, coordinates generated",
    "pos_to_expr": "coordinates given, expression generated",
    "joint": "expression and coordinates both generated",
}

# (category, pattern): the first matching pattern names a metric's category (expression first, so
# that expr_energy_distance is not read as a coordinate distance).
CATEGORIES: list[tuple[str, str]] = [
    ("Expression", r"^expr_"),
    ("Coordinates", r"procrustes|rssd|kabsch|^distance|dist_|contact|^position|extent|^nn_distance"),
    ("Neighbourhoods", r"knn|neighbo|enrichment"),
    ("Spatial patterns", r"moran"),
    ("Clusters and labels", r"\bari\b|ari_|_ari|nmi|leiden|label|cluster|transfer|composition|cell_type"),
    ("Expression", r"mse|mae|pearson|spearman|pcc|scc"),
]
CATEGORY_ORDER = ["Coordinates", "Neighbourhoods", "Spatial patterns", "Clusters and labels", "Expression", "Other"]

# Headline columns of summary.html: (label, patterns tried in order; the first metric name found wins).
HEADLINE: list[tuple[str, list[str]]] = [
    ("distance Spearman (median over cells)", [r"^distance_spearman_median$", r"dist.*spearman.*median"]),
    ("kNN preservation (k = 10)", [r"^knn_preservation_k10$", r"knn.*(_k10\b|_10\b)"]),
    ("Procrustes disparity", [r"^procrustes_disparity$", r"procrustes"]),
    ("extent ratio, worst principal axis", [r"^extent_ratio_worst$"]),
    ("expression Pearson per gene (median; posterior mean where drawn)", [r"^expr_mean_pearson_gene_median$", r"^expr_pearson_gene_median$"]),
    ("cell-type composition L1 (joint)", [r"^cell_type_composition_l1$"]),
    ("Moran's I true vs generated (correlation)", [r"^morans_i_corr$", r"moran.*(corr|pearson)"]),
    ("ARI of leiden clusters vs cell types", [r"^leiden_ari$", r"(^|_)ari($|_)"]),
]


def metric_category(name: str) -> str:
    low = name.lower()
    for category, pattern in CATEGORIES:
        if re.search(pattern, low):
            return category
    return "Other"


def fmt_value(v: float) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.3e}"
    return f"{v:.4g}"


def order_methods(methods) -> list[str]:
    """AlphaSTomics first, then the other methods, then reference rows (real slices)."""
    methods = sorted(set(methods), key=lambda m: (m != MAIN_METHOD, is_reference(m), m))
    return methods


def order_modes(modes) -> list[str]:
    modes = set(modes)
    return [m for m in MODES if m in modes] + sorted(modes - set(MODES))


def is_reference(method: str) -> bool:
    """Reference rows (a real training slice scored like a generated one) give context; they do not compete."""
    return method.startswith(REAL_PREFIX)


def _best_flags(values: dict[str, float], direction: str | None) -> set[str]:
    finite = {m: v for m, v in values.items() if v is not None and np.isfinite(v) and not is_reference(m)}
    if direction not in ("higher", "lower", "one") or len(finite) < 2:
        return set()
    if direction == "one":  # a ratio: closest to 1 in log scale
        finite = {m: -abs(np.log(v)) if v > 0 else -np.inf for m, v in finite.items()}
        direction = "higher"
    best = max(finite.values()) if direction == "higher" else min(finite.values())
    tol = 1e-12 * max(1.0, abs(best))
    return {m for m, v in finite.items() if abs(v - best) <= tol}


def metric_tables(df: pd.DataFrame) -> list[dict]:
    """One table per mode: rows = metrics grouped by category, columns = methods (mean over slices)."""
    out = []
    for mode in order_modes(df["mode"].unique()):
        sub = df[df["mode"] == mode]
        methods = order_methods(sub["method"].unique())
        slices = sorted(sub["slice"].unique())
        means = sub.groupby(["metric", "method"])["value"].mean()
        per_slice = sub.groupby(["metric", "method", "slice"])["value"].mean()
        groups: dict[str, list[dict]] = defaultdict(list)
        for metric in sorted(sub["metric"].unique()):
            direction = metric_direction(metric)
            vals = {m: float(means.get((metric, m), np.nan)) for m in methods}
            best = _best_flags(vals, direction)
            cells = []
            for m in methods:
                tip = "; ".join(
                    f"{s}: {fmt_value(float(per_slice[(metric, m, s)]))}" for s in slices if (metric, m, s) in per_slice.index
                )
                cells.append({"text": fmt_value(vals[m]), "best": m in best, "title": tip})
            groups[metric_category(metric)].append({"metric": metric, "direction": direction, "cells": cells})
        rows = [{"category": c, "rows": groups[c]} for c in sorted(groups, key=CATEGORY_ORDER.index)]
        slice_rows = []
        for (metric, method, sl), v in per_slice.items():
            slice_rows.append({"metric": metric, "method": method, "slice": sl, "value": fmt_value(float(v))})
        out.append({
            "mode": mode,
            "description": MODE_DESCRIPTION.get(mode, ""),
            "methods": methods,
            "slices": slices,
            "groups": rows,
            "n_metrics": int(sub["metric"].nunique()),
            "any_best": any(c["best"] for g in rows for r in g["rows"] for c in r["cells"]),
            "slice_rows": slice_rows,
        })
    return out


def dataset_summary(manifest: dict) -> dict:
    genes = list(manifest.get("genes", []))
    platforms = manifest.get("platforms", {}) or {}
    slices = manifest.get("slices", {}) or {}
    plat_rows = []
    measured = {}
    for name, p in platforms.items():
        mg = list(p.get("measured_genes", genes))
        measured[name] = set(mg)
        own = [s for s in slices.values() if s.get("platform") == name]
        norm = p.get("normalization", {})
        if isinstance(norm, dict):
            norm_text = norm.get("applied") or norm.get("requested") or "?"
            if norm.get("requested") and norm.get("applied") and norm["requested"] != norm["applied"]:
                norm_text = f"{norm['applied']} (requested {norm['requested']})"
        else:
            norm_text = str(norm)
        plat_rows.append({
            "name": name,
            "n_files": len(p.get("sources", [])),
            "n_slices": len(own),
            "n_cells": sum(int(s.get("n_cells", 0)) for s in own),
            "n_measured": len(mg),
            "normalization": norm_text,
            "position_key": p.get("position_key", ""),
        })
    slice_rows = [
        {
            "id": sid,
            "platform": s.get("platform", ""),
            "n_cells": int(s.get("n_cells", 0)),
            "n_dims": s.get("n_dims", ""),
            "has_cell_type": s.get("has_cell_type"),
            "source": Path(str(s.get("source", ""))).name,
        }
        for sid, s in slices.items()
    ]
    names = list(measured)
    overlap = [[len(measured[a] & measured[b]) for b in names] for a in names]
    all_measured = set.intersection(*measured.values()) if measured else set()
    return {
        "dataset": manifest.get("dataset", ""),
        "n_genes": len(genes),
        "n_slices": len(slices),
        "n_cells": sum(r["n_cells"] for r in slice_rows),
        "dims": sorted({str(r["n_dims"]) for r in slice_rows}),
        "platforms": plat_rows,
        "slices": slice_rows,
        "overlap_names": names,
        "overlap": overlap,
        "n_measured_by_all": len(all_measured),
        "package_version": manifest.get("package_version", ""),
        "format_version": manifest.get("format_version", ""),
    }


def headline_columns(df: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, metric name) of the summary's columns: the first metric matching each HEADLINE entry."""
    names = sorted(df["metric"].unique())
    cols = []
    for label, patterns in HEADLINE:
        hit = next((n for pattern in patterns for n in names if re.search(pattern, n.lower())), None)
        if hit:
            cols.append((label, hit))
    if not cols:
        cols = [(n, n) for n in names[:6]]
    return cols


def summary_rows(df: pd.DataFrame, cols: list[tuple[str, str]]) -> list[dict]:
    """Rows of the summary table, one per dataset, mode and method: the headline columns ``cols``
    (means over slices, best marked) and the slices they cover, with rowspan bookkeeping."""
    rows = []
    for ds in sorted(df["dataset"].unique()):
        dsub = df[df["dataset"] == ds]
        for mode in order_modes(dsub["mode"].unique()):
            sub = dsub[dsub["mode"] == mode]
            methods = order_methods(sub["method"].unique())
            means = sub.groupby(["metric", "method"])["value"].mean()
            best = {}
            for _, metric in cols:
                vals = {m: float(means.get((metric, m), np.nan)) for m in methods}
                best[metric] = _best_flags(vals, metric_direction(metric))
            for m in methods:
                rows.append({
                    "dataset": ds, "mode": mode, "method": m, "n_slices": int(sub[sub["method"] == m]["slice"].nunique()),
                    "slices": sorted(sub[sub["method"] == m]["slice"].unique()),
                    "cells": [{"text": fmt_value(float(means.get((metric, m), np.nan))), "best": m in best[metric]}
                              for _, metric in cols],
                })
    # rowspan bookkeeping for the dataset column
    for i, r in enumerate(rows):
        r["first_of_dataset"] = i == 0 or rows[i - 1]["dataset"] != r["dataset"]
        r["dataset_rows"] = sum(1 for x in rows if x["dataset"] == r["dataset"])
        r["first_of_mode"] = r["first_of_dataset"] or rows[i - 1]["mode"] != r["mode"]
        r["mode_rows"] = sum(1 for x in rows if x["dataset"] == r["dataset"] and x["mode"] == r["mode"])
    return rows


def summary_columns(columns: list[tuple[str, str]]) -> list[dict]:
    return [{"label": label, "metric": metric, "direction": metric_direction(metric)} for label, metric in columns]
