"""Figure sections of the report: tissues, gene maps, Moran's I, positional uncertainty, training curves.

Each function takes samples grouped by (slice, mode, method) (``inputs.sample_groups``) or the
training log, draws its figures with ``plots`` and returns what the template shows.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from alphastomics.report import plots
from alphastomics.report.inputs import find_training_log, training_summary
from alphastomics.report.tables import fmt_value, order_modes

log = logging.getLogger(__name__)

MORAN_K = 10  # neighbours of the kNN graph for Moran's I in the report figures
N_GENES_SHOWN = 3  # most and least spatially variable genes mapped per sample


def _dense(m) -> np.ndarray:
    if hasattr(m, "toarray"):
        m = m.toarray()
    return np.asarray(m, dtype=np.float64)


def _measured_mask(adata) -> np.ndarray:
    if "measured" in adata.var:
        return np.asarray(adata.var["measured"]).astype(bool)
    return np.ones(adata.n_vars, dtype=bool)


def tissue_section(groups, palette) -> list[dict]:
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
    out = []
    for mode in order_modes({p["mode"] for p in moran_panels}):
        panels = [p for p in moran_panels if p["mode"] == mode]
        for start in range(0, len(panels), 9):
            chunk = panels[start : start + 9]
            out.append({"mode": mode, "img": plots.morans_scatter_figure(chunk), "n": len(chunk)})
    return out


def uncertainty_section(groups) -> tuple[list[dict], str]:
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


def training_section(path: str | Path | None) -> dict:
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
            "n_steps": int(df[x_col].max()) if x_col == "step" else None, "summary": training_summary(found)}
