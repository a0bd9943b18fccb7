"""Collect the inputs of a report (manifest, metric tables, sample files, training log, logs) and
render the self-contained HTML pages with jinja2.

``render_report`` builds ``results/<dataset>/report.html``; ``render_summary`` builds
``results/summary.html`` from the metric tables of several datasets. Both return the HTML text;
``write_atomic`` puts it in place (temporary file + rename).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import subprocess
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphastomics import MODES, __version__
from alphastomics.errors import InputError

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).with_name("templates")
METRIC_COLUMNS = ["dataset", "slice", "mode", "method", "metric", "value"]
MAIN_METHOD = "alphastomics"
MORAN_K = 10  # neighbours of the kNN graph for Moran's I in the report figures
N_GENES_SHOWN = 3  # most and least spatially variable genes mapped per sample

MODE_DESCRIPTION = {
    "expr_to_pos": "expression given, coordinates generated",
    "pos_to_expr": "coordinates given, expression generated",
    "joint": "expression and coordinates both generated",
}

# Used when alphastomics.metrics does not (yet) export METRIC_DIRECTION: (pattern, direction),
# first match wins; patterns are searched in the lower-cased metric name.
FALLBACK_DIRECTION: list[tuple[str, str]] = [
    (r"disparity|rssd|mse|mae|rmse|error|abs_diff|absdiff|_mad\b|mean_abs|loss|distance_l", "lower"),
    (r"pearson|spearman|pcc|scc|corr|knn|preservation|precision|recall|f1|\bari\b|ari_|_ari|nmi|accuracy|"
     r"overlap|jaccard|agreement|r2\b", "higher"),
]

CATEGORIES: list[tuple[str, str]] = [
    ("Coordinates", r"procrustes|rssd|kabsch|distance|dist_|contact|position"),
    ("Neighbourhoods", r"knn|neighbo|enrichment"),
    ("Spatial patterns", r"moran"),
    ("Clusters and labels", r"\bari\b|ari_|_ari|nmi|accuracy|leiden|label|cluster|transfer"),
    ("Expression", r"mse|mae|pearson|spearman|pcc|scc|expr"),
]

# Headline columns of summary.html: (label, patterns tried in order; the first metric name found wins).
HEADLINE: list[tuple[str, list[str]]] = [
    ("distance Spearman (median over cells)", [r"^distance_spearman_median$", r"dist.*spearman.*median"]),
    ("kNN preservation (k = 10)", [r"^knn_preservation_k10$", r"knn.*(_k10\b|_10\b)"]),
    ("Procrustes disparity", [r"^procrustes_disparity$", r"procrustes"]),
    ("expression Pearson per gene (median)", [r"^expr_pearson_gene_median$", r"pearson.*gene.*median"]),
    ("Moran's I true vs generated (correlation)", [r"^morans_i_corr$", r"moran.*(corr|pearson)"]),
    ("ARI of leiden clusters vs cell types", [r"^leiden_ari$", r"(^|_)ari($|_)"]),
]


# ----------------------------------------------------------------------------------------------
# metric directions and tables


def _direction_table() -> dict[str, str]:
    try:  # the metrics module owns the authoritative table; imported only when a report is made
        from alphastomics.metrics import METRIC_DIRECTION  # type: ignore[attr-defined]

        return {str(k): str(v) for k, v in dict(METRIC_DIRECTION).items()}
    except Exception:  # noqa: BLE001 - module absent, partial or failing: use the fallback patterns
        return {}


def metric_direction(name: str, table: dict[str, str] | None = None) -> str | None:
    """``"higher"``/``"lower"`` (which value is better) or None when unknown.

    Looks ``name`` up in ``alphastomics.metrics.METRIC_DIRECTION`` (exact name, then the longest key
    that is a prefix of it), then in the fallback patterns.
    """
    table = _direction_table() if table is None else table
    if name in table:
        return table[name]
    prefixes = [k for k in table if name.startswith(k)]
    if prefixes:
        return table[max(prefixes, key=len)]
    low = name.lower()
    for pattern, direction in FALLBACK_DIRECTION:
        if re.search(pattern, low):
            return direction
    return None


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


def load_metrics(paths: list[str | Path]) -> pd.DataFrame:
    frames = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise InputError(f"metric table not found: {p}")
        try:
            df = pd.read_csv(p, sep="\t")
        except Exception as err:  # noqa: BLE001
            raise InputError(f"cannot read metric table {p}: {err}") from err
        missing = [c for c in METRIC_COLUMNS if c not in df.columns]
        if missing:
            raise InputError(f"metric table {p} lacks column(s) {', '.join(missing)} (expected {', '.join(METRIC_COLUMNS)})")
        df = df[METRIC_COLUMNS].copy()
        df["value"] = pd.to_numeric(df["value"], errors="coerce")
        for c in ("dataset", "slice", "mode", "method", "metric"):
            df[c] = df[c].astype(str)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def order_methods(methods) -> list[str]:
    methods = sorted(set(methods))
    return ([MAIN_METHOD] if MAIN_METHOD in methods else []) + [m for m in methods if m != MAIN_METHOD]


def order_modes(modes) -> list[str]:
    modes = set(modes)
    return [m for m in MODES if m in modes] + sorted(modes - set(MODES))


def _best_flags(values: dict[str, float], direction: str | None) -> set[str]:
    finite = {m: v for m, v in values.items() if v is not None and np.isfinite(v)}
    if direction not in ("higher", "lower") or len(finite) < 2:
        return set()
    best = max(finite.values()) if direction == "higher" else min(finite.values())
    tol = 1e-12 * max(1.0, abs(best))
    return {m for m, v in finite.items() if abs(v - best) <= tol}


def metric_tables(df: pd.DataFrame, directions: dict[str, str]) -> list[dict]:
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
            direction = metric_direction(metric, directions)
            vals = {m: float(means.get((metric, m), np.nan)) for m in methods}
            best = _best_flags(vals, direction)
            cells = []
            for m in methods:
                tip = "; ".join(
                    f"{s}: {fmt_value(float(per_slice[(metric, m, s)]))}" for s in slices if (metric, m, s) in per_slice.index
                )
                cells.append({"text": fmt_value(vals[m]), "best": m in best, "title": tip})
            groups[metric_category(metric)].append({"metric": metric, "direction": direction, "cells": cells})
        order = [c for c, _ in CATEGORIES] + ["Other"]
        rows = [{"category": c, "rows": groups[c]} for c in sorted(groups, key=order.index)]
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


# ----------------------------------------------------------------------------------------------
# manifest


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


# ----------------------------------------------------------------------------------------------
# sample files


@dataclass
class Sample:
    path: Path
    slice_id: str
    mode: str
    method: str
    seed: Any
    generated: list[str]
    meta: dict
    true_pos: np.ndarray
    pred_pos: np.ndarray | None
    cell_types: np.ndarray | None
    adata: Any = field(repr=False, default=None)

    @property
    def label(self) -> str:
        return f"{self.slice_id} · {self.mode} · {self.method}"

    @property
    def gen_positions(self) -> bool:
        return "position" in self.generated and self.pred_pos is not None

    @property
    def gen_expression(self) -> bool:
        return "expression" in self.generated and "expr_pred" in self.adata.layers


def _plain(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def load_sample(path: str | Path) -> Sample:
    import anndata

    path = Path(path)
    if not path.is_file():
        raise InputError(f"sample file not found: {path}")
    try:
        adata = anndata.read_h5ad(path)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"cannot read sample file {path}: {err}") from err
    if "spatial" not in adata.obsm:
        raise InputError(f"sample file {path} has no obsm['spatial'] (true coordinates)")
    meta = _plain(dict(adata.uns.get("alphastomics", {})))
    stem = path.name[: -len(".h5ad")] if path.name.endswith(".h5ad") else path.stem
    parts = stem.split(".")
    mode = str(meta.get("mode") or (parts[1] if len(parts) > 1 else "unknown"))
    slice_id = str(meta.get("slice_id") or parts[0])
    if "slice_id" in adata.obs and not meta.get("slice_id"):
        slice_id = str(adata.obs["slice_id"].iloc[0])
    generated = meta.get("generated")
    if generated is None:
        generated = {"expr_to_pos": ["position"], "pos_to_expr": ["expression"], "joint": ["expression", "position"]}.get(mode, [])
    generated = [str(g) for g in np.atleast_1d(generated)]
    true_pos = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    pred_pos = np.asarray(adata.obsm["spatial_pred"], dtype=np.float64) if "spatial_pred" in adata.obsm else None
    cell_types = None
    if "cell_type" in adata.obs:
        ct = adata.obs["cell_type"]
        if ct.notna().any():
            cell_types = np.asarray(ct.astype(object).where(ct.notna(), "unknown").astype(str))
    return Sample(
        path=path,
        slice_id=slice_id,
        mode=mode,
        method=str(meta.get("method", MAIN_METHOD)),
        seed=meta.get("seed"),
        generated=generated,
        meta=meta,
        true_pos=true_pos,
        pred_pos=pred_pos,
        cell_types=cell_types,
        adata=adata,
    )


def _seed_key(s: Sample):
    try:
        return (0, float(s.seed))
    except (TypeError, ValueError):
        return (1, str(s.seed))


def _sample_groups(samples: list[Sample]) -> dict[tuple[str, str, str], list[Sample]]:
    groups: dict[tuple[str, str, str], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[(s.slice_id, s.mode, s.method)].append(s)
    mode_rank = {m: i for i, m in enumerate(MODES)}
    ordered = sorted(groups, key=lambda k: (k[0], mode_rank.get(k[1], 99), k[2] != MAIN_METHOD, k[2]))
    return {k: sorted(groups[k], key=_seed_key) for k in ordered}


def _dense(m) -> np.ndarray:
    if hasattr(m, "toarray"):
        m = m.toarray()
    return np.asarray(m, dtype=np.float64)


def _measured_mask(adata) -> np.ndarray:
    if "measured" in adata.var:
        return np.asarray(adata.var["measured"]).astype(bool)
    return np.ones(adata.n_vars, dtype=bool)


# ----------------------------------------------------------------------------------------------
# figure sections


def tissue_section(groups, palette) -> list[dict]:
    from alphastomics.report import plots

    items = []
    for (sl, mode, method), ss in groups.items():
        s = ss[0]
        if not s.gen_positions:
            continue
        aligned, disparity = plots.procrustes_align(s.true_pos, s.pred_pos)
        labels = s.cell_types
        img = plots.tissue_figure(s.true_pos, aligned, labels, palette if labels is not None else None)
        rmsd = float(np.sqrt(np.mean(np.sum((aligned - s.true_pos) ** 2, axis=1))))
        items.append({
            "title": s.label,
            "img": img,
            "n_cells": int(s.true_pos.shape[0]),
            "n_dims": int(s.true_pos.shape[1]),
            "disparity": fmt_value(disparity),
            "rmsd": fmt_value(rmsd),
            "coloured_by": "cell type" if labels is not None else "true position along the slice's principal axis (no cell types)",
            "seed": s.seed,
            "file": s.path.name,
        })
    return items


def expression_sections(groups) -> tuple[list[dict], list[dict]]:
    """Gene maps (most/least spatially variable genes) and Moran's I scatter panels."""
    from alphastomics.report import plots

    maps, moran_panels = [], []
    graphs: dict[tuple[str, int], Any] = {}
    for (sl, mode, method), ss in groups.items():
        s = ss[0]
        if not s.gen_expression:
            continue
        ad = s.adata
        mask = _measured_mask(ad)
        genes = np.asarray(ad.var_names)[mask]
        x_true = _dense(ad.X)[:, mask]
        x_gen = _dense(ad.layers["expr_pred"])[:, mask]
        key = (sl, s.true_pos.shape[0])
        if key not in graphs:
            graphs[key] = plots.knn_graph(s.true_pos, MORAN_K)
        w = graphs[key]
        mi_true = plots.morans_i(w, x_true)
        mi_gen = plots.morans_i(w, x_gen)
        ok = np.flatnonzero(np.isfinite(mi_true))
        if ok.size == 0:
            continue
        order = ok[np.argsort(mi_true[ok])[::-1]]
        n_show = min(N_GENES_SHOWN, max(1, ok.size // 2))
        top, bottom = list(order[:n_show]), list(order[::-1][:n_show])
        bottom = [g for g in bottom if g not in top]
        if s.gen_positions:
            gen_coords, _ = plots.procrustes_align(s.true_pos, s.pred_pos)
            gen_label = "generated (at aligned generated position)"
        else:
            gen_coords, gen_label = s.true_pos, "generated"
        panels = []
        for kind, sel in (("most", top), ("least", bottom)):
            if not sel:
                continue
            img = plots.gene_maps_figure(
                s.true_pos, gen_coords, x_true[:, sel], x_gen[:, sel], [str(genes[i]) for i in sel],
                [float(mi_true[i]) for i in sel], [float(mi_gen[i]) for i in sel], gen_label,
            )
            panels.append({"kind": kind, "img": img, "genes": [str(genes[i]) for i in sel]})
        maps.append({"title": s.label, "panels": panels, "n_genes": int(mask.sum()), "file": s.path.name})
        moran_panels.append({
            "title": f"{sl} · {method}", "mode": mode,
            "true": mi_true, "generated": mi_gen, "genes": [str(g) for g in genes],
            "highlight": [str(genes[i]) for i in top + bottom],
        })
    return maps, moran_panels


def moran_figures(moran_panels: list[dict]) -> list[dict]:
    from alphastomics.report import plots

    out = []
    for mode in order_modes({p["mode"] for p in moran_panels}):
        panels = [p for p in moran_panels if p["mode"] == mode]
        for start in range(0, len(panels), 9):
            chunk = panels[start : start + 9]
            out.append({"mode": mode, "img": plots.morans_scatter_figure(chunk), "n": len(chunk)})
    return out


def uncertainty_section(groups) -> tuple[list[dict], str]:
    from alphastomics.report import plots

    items = []
    for (sl, mode, method), ss in groups.items():
        ss = [s for s in ss if s.gen_positions]
        seeds = {str(s.seed) for s in ss}
        if len(ss) < 2 or len(seeds) < 2:
            continue
        n = ss[0].true_pos.shape[0]
        if any(s.true_pos.shape != ss[0].true_pos.shape for s in ss):
            log.warning("samples of %s differ in cell count; no uncertainty map", ss[0].label)
            continue
        aligned = np.stack([plots.procrustes_align(s.true_pos, s.pred_pos)[0] for s in ss])
        mean = aligned.mean(0)
        spread = np.sqrt(np.mean(np.sum((aligned - mean) ** 2, axis=2), axis=0))
        img = plots.uncertainty_figure(ss[0].true_pos, mean, spread, len(ss))
        items.append({
            "title": ss[0].label, "img": img, "n_samples": len(ss), "seeds": ", ".join(sorted(seeds)),
            "median_spread": fmt_value(float(np.median(spread))), "n_cells": int(n),
        })
    note = ""
    if not items:
        note = ("Only one sample was drawn per slice, mode and method (no two sample files share slice, mode and "
                "method with different seeds), so there is no positional uncertainty to show. Draw several samples "
                "with different seeds to get this section.")
    return items, note


# ----------------------------------------------------------------------------------------------
# training log


def find_training_log(path: str | Path | None) -> Path | None:
    """The CSV log: ``path`` itself, else the newest ``metrics.csv`` under it (a folder) or under the
    folder that should hold it (Lightning may add ``version_N/`` levels)."""
    if not path:
        return None
    p = Path(path)
    if p.is_file():
        return p
    folder = p if p.is_dir() else p.parent
    if folder.is_dir():
        found = sorted(folder.rglob(p.name if p.suffix == ".csv" else "metrics.csv"), key=lambda q: q.stat().st_mtime)
        return found[-1] if found else None
    return None


def _training_summary(log_path: Path) -> list[dict]:
    """Scalar entries of the ``training.json`` that ``alphastomics train`` writes beside its logs."""
    for folder in (log_path.parent, log_path.parent.parent, log_path.parent.parent.parent):
        candidate = folder / "training.json"
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError):
                return []
            rows = []
            for key, value in data.items():
                if isinstance(value, (list, tuple)):
                    value = ", ".join(map(str, value)) if len(value) <= 20 else f"{len(value)} entries"
                elif isinstance(value, dict):
                    continue
                rows.append({"key": key, "value": "" if value is None else str(value)})
            return rows
    return []


def training_section(path: str | Path | None) -> dict:
    from alphastomics.report import plots

    found = find_training_log(path)
    if found is None:
        note = "No training log was given." if not path else f"Training log not found: {path}."
        return {"img": None, "note": note + " Training curves are skipped.", "final": [], "path": str(path or "")}
    try:
        df = pd.read_csv(found)
    except Exception as err:  # noqa: BLE001
        return {"img": None, "note": f"Could not read the training log {found}: {err}", "final": [], "path": str(found)}
    x_col = "step" if "step" in df.columns else ("epoch" if "epoch" in df.columns else None)
    if x_col is None:
        df = df.reset_index().rename(columns={"index": "row"})
        x_col = "row"
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = defaultdict(dict)
    final = []
    for col in df.columns:
        if col in ("epoch", "step", "row"):
            continue
        y = pd.to_numeric(df[col], errors="coerce")
        ok = y.notna() & np.isfinite(y) & df[x_col].notna()
        if not ok.any():
            continue
        series = pd.DataFrame({"x": df.loc[ok, x_col].astype(float), "y": y[ok].astype(float)}).groupby("x")["y"].mean()
        m = re.match(r"^(train|val|valid|validation|test)[/_](.+)$", col)
        split, name = (("val" if m.group(1).startswith("val") else m.group(1)), m.group(2)) if m else ("value", col)
        agg = re.match(r"^(.+)_(step|epoch)$", name)  # Lightning's on_step / on_epoch variants of one value
        if agg:
            name, split = agg.group(1), f"{split} ({'per step' if agg.group(2) == 'step' else 'epoch mean'})"
        curves[name][split] = (series.index.to_numpy(), series.to_numpy())
        final.append({"column": col, "value": fmt_value(float(series.iloc[-1])), "at": f"{x_col} {series.index[-1]:g}"})
    if not curves:
        return {"img": None, "note": f"The training log {found} holds no numeric values.", "final": [], "path": str(found)}
    names = sorted(curves, key=lambda n: (0 if n == "loss" else 1 if "loss" in n else 2, n))[:9]
    img = plots.training_curves_figure({n: curves[n] for n in names}, x_col)
    note = "" if len(curves) <= 9 else f"{len(curves) - 9} more logged quantities are listed below but not plotted."
    n_epochs = int(pd.to_numeric(df["epoch"], errors="coerce").max()) + 1 if "epoch" in df.columns and df["epoch"].notna().any() else None
    return {"img": img, "note": note, "final": final, "path": str(found), "n_epochs": n_epochs,
            "n_steps": int(df[x_col].max()) if x_col == "step" else None, "summary": _training_summary(found)}


# ----------------------------------------------------------------------------------------------
# provenance


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def git_commit(cwd: str | Path | None = None) -> str:
    for where in ([cwd] if cwd else []) + [os.getcwd(), Path(__file__).resolve().parent]:
        try:
            head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
            if head.returncode != 0:
                continue
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                   capture_output=True, text=True, timeout=10)
            return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            continue
    return "unknown (not run from a git checkout)"


_TS = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})")


def log_runtimes(log_dir: str | Path | None, dataset: str) -> list[dict]:
    """Start, end and duration of each log file, from the first and last timestamp it holds."""
    if not log_dir or not Path(log_dir).is_dir():
        return []
    files = [p for p in sorted(Path(log_dir).rglob("*")) if p.is_file() and p.suffix in (".log", ".txt", ".err", ".out", "")]
    mine = [p for p in files if dataset and dataset in str(p.relative_to(log_dir))]
    rows = []
    for p in (mine or files)[:200]:
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        stamps = _TS.findall(text)
        start = end = duration = ""
        if stamps:
            try:
                t0 = _dt.datetime.fromisoformat(" ".join(stamps[0]))
                t1 = _dt.datetime.fromisoformat(" ".join(stamps[-1]))
                start, end = t0.isoformat(sep=" "), t1.isoformat(sep=" ")
                duration = _fmt_seconds((t1 - t0).total_seconds())
            except ValueError:
                pass
        rows.append({"file": str(p.relative_to(log_dir)), "start": start, "end": end, "duration": duration,
                     "size": f"{p.stat().st_size:,} B"})
    return rows


def _fmt_seconds(s: float | None) -> str:
    if s is None or not np.isfinite(s):
        return ""
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {s % 60:.0f} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def provenance_section(samples, config, checkpoint, log_dir, dataset, manifest) -> dict:
    config_text, config_note = "", ""
    if config:
        if Path(config).is_file():
            config_text = Path(config).read_text(errors="replace")
        else:
            config_note = f"Configuration file not found: {config}"
    ckpt_hash, ckpt_note = "", ""
    if checkpoint:
        if Path(checkpoint).is_file():
            ckpt_hash = sha256_file(checkpoint)
        else:
            ckpt_note = f"Checkpoint not found: {checkpoint}"
    sample_hashes = sorted({str(s.meta["checkpoint_sha256"]) for s in samples if s.meta.get("checkpoint_sha256")})
    mismatch = [h for h in sample_hashes if ckpt_hash and h != ckpt_hash]
    sample_rows = [
        {
            "file": s.path.name, "slice": s.slice_id, "mode": s.mode, "method": s.method,
            "seed": "" if s.seed is None else s.seed, "steps": s.meta.get("steps", ""),
            "n_cells": int(s.true_pos.shape[0]), "n_dims": int(s.true_pos.shape[1]),
            "runtime": _fmt_seconds(s.meta.get("runtime_s")) if isinstance(s.meta.get("runtime_s"), (int, float)) else "",
            "version": s.meta.get("package_version", ""),
        }
        for s in samples
    ]
    return {
        "report_version": __version__,
        "manifest_version": manifest.get("package_version", ""),
        "sample_versions": sorted({str(s.meta["package_version"]) for s in samples if s.meta.get("package_version")}),
        "git_commit": git_commit(),
        "config_path": str(config or ""),
        "config_text": config_text,
        "config_note": config_note,
        "checkpoint": str(checkpoint or ""),
        "checkpoint_sha256": ckpt_hash,
        "checkpoint_note": ckpt_note,
        "sample_hashes": sample_hashes,
        "hash_mismatch": mismatch,
        "samples": sample_rows,
        "logs": log_runtimes(log_dir, dataset),
        "log_dir": str(log_dir or ""),
        "generated_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------------------------------------
# rendering


def _wbr(text) -> "markupsafe.Markup":  # noqa: F821
    """Escape ``text`` and allow line breaks after dots, underscores and slashes (long file names)."""
    import markupsafe

    escaped = str(markupsafe.escape(str(text)))
    return markupsafe.Markup(re.sub(r"([._/])", r"\1<wbr>", escaped))


def _env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["thousands"] = lambda v: f"{int(v):,}" if isinstance(v, (int, np.integer)) else v
    env.filters["wbr"] = _wbr
    return env


def render_report(
    manifest: str | Path,
    metrics: list[str | Path],
    samples: list[str | Path] = (),
    dataset: str | None = None,
    training_log: str | Path | None = None,
    config: str | Path | None = None,
    checkpoint: str | Path | None = None,
    log_dir: str | Path | None = None,
) -> str:
    """The HTML of one dataset's report."""
    from alphastomics.report import plots

    from alphastomics.io.manifest import load_manifest

    man = load_manifest(manifest)
    dataset = dataset or man.get("dataset") or Path(manifest).parent.name
    df = load_metrics(list(metrics))
    if not df.empty and (df["dataset"] != dataset).any():
        other = sorted(set(df["dataset"]) - {dataset})
        log.warning("metric table holds rows of other dataset(s) %s; they are left out", ", ".join(other))
        df = df[df["dataset"] == dataset]
    directions = _direction_table()
    loaded = [load_sample(p) for p in samples]
    groups = _sample_groups(loaded)
    all_types = sorted({t for s in loaded if s.cell_types is not None for t in np.unique(s.cell_types)})
    palette = plots.cell_type_palette(all_types)

    summary = dataset_summary(man)
    tables = metric_tables(df, directions)
    training = training_section(training_log)
    tissue = tissue_section(groups, palette)
    gene_maps, moran_panels = expression_sections(groups)
    morans = moran_figures(moran_panels)
    uncertainty, uncertainty_note = uncertainty_section(groups)
    prov = provenance_section(loaded, config, checkpoint, log_dir, dataset, man)
    sampled = sorted({(s.slice_id, s.mode, s.method) for s in loaded})

    return _env().get_template("report.html.j2").render(
        dataset=dataset,
        summary=summary,
        tables=tables,
        training=training,
        tissue=tissue,
        gene_maps=gene_maps,
        morans=morans,
        moran_k=MORAN_K,
        uncertainty=uncertainty,
        uncertainty_note=uncertainty_note,
        prov=prov,
        n_samples=len(loaded),
        sampled_slices=sorted({s for s, _, _ in sampled}),
        sampled_modes=order_modes({m for _, m, _ in sampled}),
        methods=order_methods({m for _, _, m in sampled} | set(df["method"].unique())),
        mode_description=MODE_DESCRIPTION,
        has_3d=any(s.true_pos.shape[1] == 3 for s in loaded),
        direction_source="alphastomics.metrics.METRIC_DIRECTION" if directions else "name patterns (alphastomics.metrics.METRIC_DIRECTION not available)",
    )


def _headline_columns(df: pd.DataFrame) -> list[tuple[str, str]]:
    names = sorted(df["metric"].unique())
    cols = []
    for label, patterns in HEADLINE:
        hit = next((n for pattern in patterns for n in names if re.search(pattern, n.lower())), None)
        if hit:
            cols.append((label, hit))
    if not cols:
        cols = [(n, n) for n in names[:6]]
    return cols


def render_summary(metrics: list[str | Path], reports: dict[str, str] | None = None, out: str | Path | None = None) -> str:
    """HTML of ``results/summary.html``: one headline table over all datasets, modes and methods.

    ``reports`` maps dataset -> report path; without it a link is made to ``report.html`` next to a
    dataset's metric table when that file exists. Links are relative to ``out``'s folder.
    """
    frames = []
    report_links: dict[str, str] = {}
    out_dir = Path(out).resolve().parent if out else Path.cwd()
    for p in metrics:
        df = load_metrics([p])
        frames.append(df)
        for ds in df["dataset"].unique():
            candidate = Path((reports or {}).get(ds, Path(p).parent / "report.html"))
            if candidate.is_file() or (reports and ds in reports):
                report_links[ds] = os.path.relpath(candidate.resolve(), out_dir)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
    directions = _direction_table()
    cols = _headline_columns(df) if not df.empty else []
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
                best[metric] = _best_flags(vals, metric_direction(metric, directions))
            for m in methods:
                rows.append({
                    "dataset": ds, "mode": mode, "method": m, "n_slices": int(sub[sub["method"] == m]["slice"].nunique()),
                    "cells": [{"text": fmt_value(float(means.get((metric, m), np.nan))), "best": m in best[metric]}
                              for _, metric in cols],
                })
    # rowspan bookkeeping for the dataset column
    for i, r in enumerate(rows):
        r["first_of_dataset"] = i == 0 or rows[i - 1]["dataset"] != r["dataset"]
        r["dataset_rows"] = sum(1 for x in rows if x["dataset"] == r["dataset"])
        r["first_of_mode"] = r["first_of_dataset"] or rows[i - 1]["mode"] != r["mode"]
        r["mode_rows"] = sum(1 for x in rows if x["dataset"] == r["dataset"] and x["mode"] == r["mode"])
    columns = [{"label": label, "metric": metric, "direction": metric_direction(metric, directions)} for label, metric in cols]
    return _env().get_template("summary.html.j2").render(
        columns=columns,
        rows=rows,
        datasets=sorted(df["dataset"].unique()),
        links=report_links,
        mode_description=MODE_DESCRIPTION,
        generated_at=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        version=__version__,
        n_metrics=int(df["metric"].nunique()) if not df.empty else 0,
    )


def write_atomic(text: str, out: str | Path) -> Path:
    """Write ``text`` to ``out`` through a temporary file in the same folder and a rename."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out
