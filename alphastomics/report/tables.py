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
from alphastomics.layout import CONSENSUS_PREFIX
from alphastomics.metrics import metric_direction
from alphastomics.peers import LOWER_BOUNDS, ORACLES
from alphastomics.references import REAL_PREFIX
from alphastomics.report.inputs import MAIN_METHOD

DIRECTION_SOURCE = "alphastomics.metrics.METRIC_DIRECTION"

MODE_DESCRIPTION = {
    "expr_to_pos": "expression given, coordinates generated",
    "pos_to_expr": "coordinates given, expression generated",
    "joint": "expression and coordinates both generated",
    "impute": "coordinates and most genes given, held-out genes generated (scored on the held-out genes)",
    "domains": "per-cell embeddings; leiden clusters scored against cell types",
}

# Lower bounds (the simplest predictor of a mode): listed after the peers; they compete (a method
# that does not beat them has learnt nothing), unlike reference rows.

# (category, pattern): the first matching pattern names a metric's category (expression first, so
# that expr_energy_distance is not read as a coordinate distance).
CATEGORIES: list[tuple[str, str]] = [
    ("Expression", r"^expr_"),
    ("Coordinates", r"procrustes|rssd|kabsch|^distance|dist_|contact|^position|^place_|extent|^nn_distance|^density|^axis_profile"),
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
    ("expression Spearman per gene (median; posterior mean where drawn)", [r"^expr_mean_spearman_gene_median$", r"^expr_spearman_gene_median$"]),
    ("ARI of leiden clusters vs cell types", [r"^leiden_ari$", r"(^|_)ari($|_)"]),
    ("ARI of embedding clusters vs cell types", [r"^embedding_leiden_ari$"]),
    ("NMI of embedding clusters vs cell types", [r"^embedding_leiden_nmi$"]),
]


# Column titles of summary.html, short enough for a laptop window; the HEADLINE label is the
# title's tooltip and the page's legend.
SHORT_LABEL = {
    "distance Spearman (median over cells)": "distance Spearman",
    "kNN preservation (k = 10)": "kNN@10",
    "Procrustes disparity": "Procrustes disparity",
    "extent ratio, worst principal axis": "extent ratio (worst axis)",
    "expression Pearson per gene (median; posterior mean where drawn)": "expr. Pearson",
    "cell-type composition L1 (joint)": "composition L1",
    "Moran's I true vs generated (correlation)": "Moran's I corr.",
    "expression Spearman per gene (median; posterior mean where drawn)": "expr. Spearman",
    "ARI of leiden clusters vs cell types": "leiden ARI",
    "ARI of embedding clusters vs cell types": "embedding ARI",
    "NMI of embedding clusters vs cell types": "embedding NMI",
}


def metric_category(name: str) -> str:
    low = name.lower().removeprefix(CONSENSUS_PREFIX)  # the consensus layout's metrics sit beside the draw's
    for category, pattern in CATEGORIES:
        if re.search(pattern, low):
            return category
    return "Other"


SIGNIFICANT_DIGITS = 3  # metrics move in their second or third digit between seeds; more digits are noise


def fmt_value(v: float) -> str:
    """A figure of the report and the summary at three significant digits, in plain decimals
    (``0.937``, ``-0.00380``, ``0.0000946``, ``1.00``), thousands grouped and no decimals from
    1,000 up (``12,346``); scientific notation only below 1e-5, where a decimal would be mostly
    zeros. Trailing zeros are kept, so that a column of figures has one precision."""
    if v is None or not np.isfinite(v):
        return "–"
    if v == 0:
        return "0"
    rounded = float(f"{v:.{SIGNIFICANT_DIGITS}g}")  # round first: 0.9996 becomes 1.00, not 1.000
    if abs(rounded) >= 1000:  # a count or a time: its units are precision enough
        return f"{v:,.0f}"
    if abs(rounded) < 1e-5:
        return f"{rounded:.{SIGNIFICANT_DIGITS - 1}e}"
    decimals = max(0, SIGNIFICANT_DIGITS - 1 - int(np.floor(np.log10(abs(rounded)))))
    return f"{rounded:.{decimals}f}"


def order_methods(methods) -> list[str]:
    """AlphaSTomics first, then the peers, then lower bounds, then reference rows (real slices)."""
    methods = sorted(set(methods), key=lambda m: (m != MAIN_METHOD, is_reference(m), m in LOWER_BOUNDS, m))
    return methods


def order_modes(modes) -> list[str]:
    modes = set(modes)
    return [m for m in MODES if m in modes] + sorted(modes - set(MODES))


def is_reference(method: str) -> bool:
    """Reference rows (a real training slice scored like a generated one; an oracle that sees true
    coordinates) give context; they do not compete."""
    return method.startswith(REAL_PREFIX) or method in ORACLES


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


def _runs_of(runs: pd.DataFrame | None, mode: str) -> pd.DataFrame:
    if runs is None or runs.empty:
        return pd.DataFrame(columns=["dataset", "slice", "mode", "method", "status", "reason", "wall_s", "max_rss_mb"])
    return runs[runs["mode"] == mode]


def run_cells(runs: pd.DataFrame, method: str) -> dict:
    """Status, wall time and peak memory of a method's runs in one mode (means over slices)."""
    mine = runs[runs["method"] == method]
    if mine.empty:
        return {"status": "", "reason": "", "wall": "–", "memory": "–", "ok": True}
    bad = mine[mine["status"] != "ok"]
    status = "ok" if bad.empty else str(bad["status"].iloc[0])
    reason = "; ".join(sorted({f"{r['slice']}: {r['reason']}" if r["slice"] else str(r["reason"]) for _, r in bad.iterrows()}))
    wall = pd.to_numeric(mine["wall_s"], errors="coerce").mean()
    memory = pd.to_numeric(mine["max_rss_mb"], errors="coerce").max()
    return {"status": status, "reason": reason, "ok": bad.empty,
            "wall": fmt_value(float(wall)) if np.isfinite(wall) else "–",
            "memory": fmt_value(float(memory)) if np.isfinite(memory) else "–"}


def metric_tables(df: pd.DataFrame, runs: pd.DataFrame | None = None) -> list[dict]:
    """One table per mode: rows = metrics grouped by category, columns = methods (mean over slices).

    ``runs`` (alphastomics.runs): every method that ran in a mode gets a column, also one that
    failed (its cells say so), and the table ends with each method's status, wall time and peak memory.
    """
    out = []
    modes = set(df["mode"].unique()) | (set(runs["mode"].unique()) - {"train"} if runs is not None and not runs.empty else set())
    for mode in order_modes(modes):
        sub = df[df["mode"] == mode]
        mode_runs = _runs_of(runs, mode)
        methods = order_methods(set(sub["method"].unique()) | set(mode_runs["method"].unique()))
        run_info = {m: run_cells(mode_runs, m) for m in methods}
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
                text = fmt_value(vals[m])
                if text == "–" and not run_info[m]["ok"]:
                    text, tip = run_info[m]["status"], run_info[m]["reason"]
                cells.append({"text": text, "best": m in best, "title": tip})
            groups[metric_category(metric)].append({"metric": metric, "direction": direction, "cells": cells})
        rows = [{"category": c, "rows": groups[c]} for c in sorted(groups, key=CATEGORY_ORDER.index)]
        slice_rows = []
        for (metric, method, sl), v in per_slice.items():
            slice_rows.append({"metric": metric, "method": method, "slice": sl, "value": fmt_value(float(v))})
        if not mode_runs.empty:
            rows.append({"category": "Run (status, wall time, peak memory)", "rows": [
                {"metric": "status", "direction": None,
                 "cells": [{"text": (run_info[m]["status"] or "–") if run_info[m]["ok"] else f"{run_info[m]['status']}: {run_info[m]['reason']}",
                            "best": False, "title": run_info[m]["reason"]} for m in methods]},
                {"metric": "wall time, s", "direction": None,
                 "cells": [{"text": run_info[m]["wall"], "best": False, "title": ""} for m in methods]},
                {"metric": "peak memory, MB", "direction": None,
                 "cells": [{"text": run_info[m]["memory"], "best": False, "title": ""} for m in methods]},
            ]})
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


# Where AlphaSTomics is ranked against point estimates (the summary and the targets), a mode that
# draws samples is judged on its point estimate where the sample file has one: expr_to_pos on the
# consensus layout (alphastomics.layout), as impute is judged on the posterior mean of expression
# (expr_mean_*). A single draw carries its own share of the posterior's spread, which no peer's
# output does; the draw's figures stay in the metric tables beside it.
POINT_ESTIMATE_PREFIX = {"expr_to_pos": CONSENSUS_PREFIX}


def judged_metric(mode: str, method: str, metric: str, available) -> str:
    """The metric ``method`` is ranked on for ``metric`` in ``mode``, ``available`` the metrics it has."""
    prefix = POINT_ESTIMATE_PREFIX.get(mode)
    if method == MAIN_METHOD and prefix and prefix + metric in available:
        return prefix + metric
    return metric


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


def rank_of(values: dict[str, float], method: str, direction: str | None) -> tuple[int, int] | None:
    """(rank, competitors) of ``method`` among the methods with a finite value (reference rows left
    out; ties share the better rank), or None when it has no value or the direction is unknown."""
    finite = {m: v for m, v in values.items() if v is not None and np.isfinite(v) and not is_reference(m)}
    if method not in finite or direction not in ("higher", "lower", "one"):
        return None
    if direction == "one":
        score = {m: -abs(np.log(v)) if v > 0 else -np.inf for m, v in finite.items()}
    elif direction == "higher":
        score = dict(finite)
    else:
        score = {m: -v for m, v in finite.items()}
    return 1 + sum(1 for m, v in score.items() if v > score[method]), len(score)


def summary_rows(df: pd.DataFrame, cols: list[tuple[str, str]], runs: pd.DataFrame | None = None) -> list[dict]:
    """Rows of the summary table, one per dataset, mode and method: the headline columns ``cols``
    (means over slices, best marked, each method's rank), status, wall time and peak memory of
    the method's runs (``runs``: alphastomics.runs), with rowspan bookkeeping."""
    rows = []
    if runs is None:
        runs = pd.DataFrame(columns=["dataset", "slice", "mode", "method", "status", "reason", "wall_s", "max_rss_mb"])
    datasets = sorted(set(df["dataset"].unique()) | set(runs["dataset"].unique()))
    for ds in datasets:
        dsub = df[df["dataset"] == ds]
        druns = runs[runs["dataset"] == ds]
        training = druns[druns["mode"] == "train"]
        modes = set(dsub["mode"].unique()) | (set(druns["mode"].unique()) - {"train"})
        for mode in order_modes(modes):
            sub = dsub[dsub["mode"] == mode]
            mode_runs = druns[druns["mode"] == mode]
            methods = order_methods(set(sub["method"].unique()) | set(mode_runs["method"].unique()))
            means = sub.groupby(["metric", "method"])["value"].mean()
            available = {m: set(sub[sub["method"] == m]["metric"]) for m in methods}
            best, values, judged = {}, {}, {}
            for _, metric in cols:
                judged[metric] = {m: judged_metric(mode, m, metric, available[m]) for m in methods}
                values[metric] = {m: float(means.get((judged[metric][m], m), np.nan)) for m in methods}
                best[metric] = _best_flags(values[metric], metric_direction(metric))
            for m in methods:
                run = run_cells(mode_runs, m)
                train = run_cells(training, m) if m == MAIN_METHOD and not training.empty else None
                cells = []
                for _, metric in cols:
                    rank = rank_of(values[metric], m, metric_direction(metric))
                    cells.append({"text": fmt_value(values[metric][m]), "best": m in best[metric],
                                  "rank": f"#{rank[0]}/{rank[1]}" if rank and rank[1] > 1 else "",
                                  "metric": judged[metric][m], "point_estimate": judged[metric][m] != metric})
                rows.append({
                    "dataset": ds, "mode": mode, "method": m, "n_slices": int(sub[sub["method"] == m]["slice"].nunique()),
                    "slices": sorted(sub[sub["method"] == m]["slice"].unique()),
                    "cells": cells,
                    "status": run["status"] or ("reference" if is_reference(m) else "ok" if m in set(sub["method"]) else "–"),
                    "reason": run["reason"], "ok": run["ok"], "wall": run["wall"], "memory": run["memory"],
                    "training_wall": train["wall"] if train else "", "training_memory": train["memory"] if train else "",
                    "reference": is_reference(m), "lower_bound": m in LOWER_BOUNDS,
                })
    # rowspan bookkeeping for the dataset column
    for i, r in enumerate(rows):
        r["first_of_dataset"] = i == 0 or rows[i - 1]["dataset"] != r["dataset"]
        r["dataset_rows"] = sum(1 for x in rows if x["dataset"] == r["dataset"])
        r["first_of_mode"] = r["first_of_dataset"] or rows[i - 1]["mode"] != r["mode"]
        r["mode_rows"] = sum(1 for x in rows if x["dataset"] == r["dataset"] and x["mode"] == r["mode"])
    return rows


# Targets of the benchmark (issue 12), printed by the pipeline, never asserted: per held-out slice,
# (mode, metric, whom AlphaSTomics must be ahead of). "peers": every other method of the mode that
# is not a reference row; a list: those methods; "references": every real training slice.
TARGETS: list[tuple[str, str, object]] = [
    ("expr_to_pos", "knn_preservation_k10", "peers"),
    ("expr_to_pos", "distance_spearman_median", "peers"),
    ("pos_to_expr", "expr_mean_pearson_gene_median", "peers"),
    ("impute", "expr_mean_spearman_gene_median", ["knn", "tangram"]),
    ("joint", "expr_energy_distance_pca", "references"),
    ("joint", "distance_wasserstein_unit_rms", "references"),
]


def target_rows(df: pd.DataFrame) -> list[dict]:
    """Is AlphaSTomics ahead, slice by slice, where the targets say it should be? Plain words where it is not."""
    out = []
    for ds in sorted(df["dataset"].unique()):
        dsub = df[df["dataset"] == ds]
        for mode, metric, against in TARGETS:
            sub = dsub[(dsub["mode"] == mode) & (dsub["metric"] == metric)]
            direction = metric_direction(metric)
            slices = sorted(dsub[dsub["mode"] == mode]["slice"].unique())
            for sl in slices:
                values = sub[sub["slice"] == sl].groupby("method")["value"].mean().to_dict()
                here = dsub[(dsub["mode"] == mode) & (dsub["slice"] == sl) & (dsub["method"] == MAIN_METHOD)]
                mine_metric = judged_metric(mode, MAIN_METHOD, metric, set(here["metric"]))
                mine = float(here[here["metric"] == mine_metric]["value"].mean())  # NaN when AlphaSTomics has none
                if against == "peers":
                    rivals = {m: v for m, v in values.items() if m != MAIN_METHOD and not is_reference(m)}
                elif against == "references":
                    rivals = {m: v for m, v in values.items() if is_reference(m)}
                else:
                    rivals = {m: values.get(m, np.nan) for m in against}
                rivals = {m: v for m, v in rivals.items() if np.isfinite(v)}
                # lower bounds alone (pos_to_expr in per-slice frames, where kNN of positions does
                # not apply) are no rivals of their own: beating them is no verdict
                only_bounds = against == "peers" and rivals and all(m in LOWER_BOUNDS for m in rivals)
                row = {"dataset": ds, "slice": sl, "mode": mode, "metric": metric, "direction": direction,
                       "alphastomics": fmt_value(float(mine)), "alphastomics_metric": mine_metric,
                       "against": against if isinstance(against, str) else ", ".join(against)}
                if not np.isfinite(mine):
                    row.update(met=None, verdict="not measured: AlphaSTomics has no value", best_rival="–", best_value="–")
                elif not rivals:
                    row.update(met=None, verdict="not measured: no rival has a value", best_rival="–", best_value="–")
                elif only_bounds:
                    row.update(met=None, verdict=f"not measured: only lower bounds ran ({', '.join(sorted(rivals))})",
                               best_rival="–", best_value="–")
                else:
                    better = (lambda a, b: a > b) if direction == "higher" else (lambda a, b: a < b)
                    best_rival = max(rivals, key=lambda m: rivals[m]) if direction == "higher" else min(rivals, key=lambda m: rivals[m])
                    met = all(better(mine, v) for v in rivals.values())
                    behind = sorted(m for m, v in rivals.items() if not better(mine, v))
                    row.update(met=met, best_rival=best_rival, best_value=fmt_value(float(rivals[best_rival])),
                               verdict="ahead" if met else f"NOT ahead: behind or level with {', '.join(behind)}")
                out.append(row)
    return out


def _judged_on(row: dict) -> str:
    return "" if row["alphastomics_metric"] == row["metric"] else f" ({row['alphastomics_metric']})"


def targets_text(rows: list[dict]) -> str:
    lines = ["Targets (AlphaSTomics ahead on every held-out slice; printed, not asserted)"]
    for r in rows:
        lines.append(f"{r['dataset']} {r['slice']} {r['mode']} {r['metric']} ({'higher' if r['direction'] == 'higher' else 'lower'} "
                     f"is better) vs {r['against']}: alphastomics{_judged_on(r)} {r['alphastomics']}, best rival {r['best_rival']} "
                     f"{r['best_value']} -> {r['verdict']}")
    if len(lines) == 1:
        lines.append("no target could be measured (no metric rows)")
    met = sum(1 for r in rows if r["met"])
    lines.append(f"{met} of {len(rows)} targets met")
    return "\n".join(lines) + "\n"


def summary_columns(columns: list[tuple[str, str]]) -> list[dict]:
    return [{"label": label, "short": SHORT_LABEL.get(label, label), "metric": metric, "direction": metric_direction(metric)}
            for label, metric in columns]
