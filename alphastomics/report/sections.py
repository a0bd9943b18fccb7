"""Figure sections of the report: tissues, gene maps, Moran's I, per-gene accuracy, positional
uncertainty, training curves.

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

from alphastomics.io import sample_file
from alphastomics.io.sample_file import EXPR_PRED, POSITION_UNCERTAINTY, SPATIAL_PRED_CONSENSUS, SPATIAL_PRED_DRAWS
from alphastomics.metrics import expression
from alphastomics.report import plots
from alphastomics.report.inputs import MAIN_METHOD, find_training_log, training_summary
from alphastomics.report.tables import fmt_value, is_reference, order_methods, order_modes

log = logging.getLogger(__name__)

MORAN_K = 10  # neighbours of the kNN graph for Moran's I in the report figures
N_GENES_SHOWN = 3  # most and least spatially variable genes mapped per sample
# Modes whose expression estimate is judged per gene against the peers, and the genes named where
# AlphaSTomics is furthest behind the best of them
GENE_ACCURACY_MODES = ("pos_to_expr", "impute")
N_WORST_GENES = 8


def _dense(m) -> np.ndarray:
    if hasattr(m, "toarray"):
        m = m.toarray()
    return np.asarray(m, dtype=np.float64)


def frame_of(sample) -> str:
    return str(sample.meta.get("coordinate_frame") or "per_slice")


def joint_colours(sample, dataset_dir: Path | None, palette: dict) -> tuple[np.ndarray, np.ndarray, dict | None, str]:
    """Colours of the true and the generated cells of a joint sample: cell types (the generated
    cells typed by the kNN classifier of the metrics, trained on the model's training slices) where
    the data has them, else the first principal component of expression (the true slice's PCA)."""
    from alphastomics.references import CellTyper, load_reference

    ad = sample.adata
    mask = sample_file.measured_genes(ad)
    x_true = _dense(ad.X)[:, mask]
    x_gen = _dense(ad.layers[EXPR_PRED])[:, mask]
    train = [t for t in np.atleast_1d(sample.meta.get("train_slices") or []) if str(t) != sample.slice_id]
    if sample.cell_types is not None and dataset_dir is not None and train:
        try:
            reference = load_reference(dataset_dir, [str(t) for t in train], [str(g) for g in ad.var_names[mask]],
                                       sample.true_pos.shape[1])
            typer = CellTyper(reference, 30, 15, 0)
            if typer.classifier is not None:
                return sample.cell_types, typer.predict(x_gen), palette, "cell type (generated cells: predicted)"
        except Exception as err:  # noqa: BLE001 - a figure must not stop the report
            log.warning("%s: cell types of generated cells not predicted (%s); coloured by expression PC1", sample.label, err)
    from sklearn.decomposition import PCA

    pca = PCA(n_components=1, random_state=0).fit(x_true)
    return pca.transform(x_true)[:, 0], pca.transform(x_gen)[:, 0], None, "expression PC1 (PCA of the true slice)"


def place_generated(sample, generated: np.ndarray) -> tuple[np.ndarray, float]:
    """Generated coordinates as the report draws them beside the true ones, and their RMS distance
    to them: as they are in a shared frame (absolute coordinates), rigidly aligned in a per-slice one."""
    if frame_of(sample) == "shared":
        return generated, float(np.sqrt(np.nanmean(np.sum((generated - sample.true_pos) ** 2, axis=1))))
    return plots.rigid_align(sample.true_pos, generated)


def tissue_section(groups, palette, dataset_dir: Path | None = None) -> list[dict]:
    items = []
    for (sl, mode, method), ss in groups.items():
        s = ss[0]
        if not s.gen_positions:
            continue
        labels = s.cell_types
        common = {"title": s.label, "n_cells": int(s.true_pos.shape[0]), "n_dims": int(s.true_pos.shape[1]),
                  "seed": s.seed, "file": s.path.name, "mode": mode}
        if mode == "joint":
            true_colour, gen_colour, used_palette, colour_label = joint_colours(s, dataset_dir, palette)
            img = plots.side_by_side_figure(s.true_pos, s.pred_pos, true_colour, gen_colour, used_palette, colour_label)
            draws = s.adata.obsm[SPATIAL_PRED_DRAWS].shape[1] if SPATIAL_PRED_DRAWS in s.adata.obsm else 1
            which = f"; the first of {draws} draws, whose metrics the tables average" if draws > 1 else ""
            items.append({**common, "img": img, "coloured_by": colour_label,
                          "how": "the generated slice beside the true one, each centred in its own frame, no alignment "
                                 f"(generated cells are new cells, not the true ones){which}"})
            continue
        aligned, rmsd = place_generated(s, s.pred_pos)
        if frame_of(s) == "shared":
            how, title = "no alignment: a shared coordinate frame, generated coordinates are absolute", "generated"
        else:
            how = ("rotation or reflection and translation onto the true coordinates, no scaling: "
                   "a tissue of the wrong size is drawn at its wrong size")
            title = "generated (rigidly aligned)"
        coloured_by = "cell type" if labels is not None else "true position along the slice's principal axis (no cell types)"
        img = plots.tissue_figure(s.true_pos, aligned, labels, palette if labels is not None else None, generated_title=title)
        items.append({**common, "img": img, "how": how, "rmsd": fmt_value(rmsd), "coloured_by": coloured_by})
        if SPATIAL_PRED_CONSENSUS in s.adata.obsm:
            consensus, consensus_rmsd = place_generated(s, np.asarray(s.adata.obsm[SPATIAL_PRED_CONSENSUS], dtype=np.float64))
            placed = ("no alignment (a shared frame)" if frame_of(s) == "shared"
                      else "rotation or reflection and translation onto the true coordinates, no scaling")
            img = plots.tissue_figure(s.true_pos, consensus, labels, palette if labels is not None else None,
                                      generated_title="consensus layout")
            items.append({**common, "title": f"{s.label} · consensus layout of the draws", "img": img, "coloured_by": coloured_by,
                          "rmsd": fmt_value(consensus_rmsd),
                          "how": f"obsm['{SPATIAL_PRED_CONSENSUS}'], {placed}: each cell at its mean position over the draws "
                                 "(the posterior mean in a shared frame), spread back to the draws' size (constrained Bayes)"})
    return items


def matched_cells(peer, main, cell_ids: pd.Index, section: str) -> np.ndarray | None:
    """Indices that put ``peer``'s cells in the order of ``cell_ids`` (AlphaSTomics' cells); None,
    with a warning naming ``section``, where its cells are not those cells."""
    order = pd.Index(peer.adata.obs_names).get_indexer(cell_ids)
    if (order < 0).any() or len(peer.adata) != len(cell_ids):
        log.warning("%s: its cells are not those of %s; left out of %s", peer.path, main.path, section)
        return None
    return order


def layout_comparison_section(groups, peer_samples, palette) -> list[dict]:
    """expr_to_pos: per held-out slice, AlphaSTomics' layout (its consensus, else its draw) beside
    every peer's on one scale, each placed as the tissue section places it (as it is in a shared
    frame; rotation or reflection and translation in a per-slice one). A peer's cells are matched
    to AlphaSTomics' by cell id; a peer whose cells differ is left out with a warning."""
    items = []
    for (sl, mode, method), ss in groups.items():
        if mode != "expr_to_pos" or method != MAIN_METHOD or not ss[0].gen_positions:
            continue
        main = ss[0]
        peers = {p.method: p for p in peer_samples if p.slice_id == sl and p.mode == "expr_to_pos" and p.method != MAIN_METHOD}
        if not peers:
            continue
        consensus = SPATIAL_PRED_CONSENSUS in main.adata.obsm
        own = np.asarray(main.adata.obsm[SPATIAL_PRED_CONSENSUS], dtype=np.float64) if consensus else main.pred_pos
        layouts = [(f"{MAIN_METHOD} ({'consensus' if consensus else 'draw'})", place_generated(main, own)[0])]
        cell_ids = pd.Index(main.adata.obs_names)
        for name in order_methods(peers):
            peer = peers[name]
            order = matched_cells(peer, main, cell_ids, "the side-by-side layouts")
            if order is None:
                continue
            placed, _ = place_generated(main, peer.pred_pos[order])  # onto the true cells in AlphaSTomics' order
            layouts.append((name, placed))
        labels = main.cell_types
        img = plots.layouts_figure(main.true_pos, layouts, labels, palette if labels is not None else None)
        placing = ("no alignment (a shared frame)" if frame_of(main) == "shared"
                   else "each rotated or reflected and translated onto the true coordinates, no scaling")
        items.append({"title": f"{sl} · expr_to_pos · every method", "img": img, "mode": mode,
                      "coloured_by": "cell type" if labels is not None else "true position along the slice's principal axis",
                      "how": f"the same cells laid out by each method, {placing}; in 3D the two widest axes of the true slice. "
                             "random is a lower bound; oracle sees 80% of the true coordinates (the metric tables say more)"})
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
        mask = sample_file.measured_genes(ad)
        genes = np.asarray(ad.var_names)[mask]
        x_true = _dense(ad.X)[:, mask]
        x_gen = _dense(ad.layers[EXPR_PRED])[:, mask]
        key = (sl, s.true_pos.shape[0])
        if key not in graphs:
            graphs[key] = plots.knn_graph(s.true_pos, MORAN_K)
        w = graphs[key]
        mi_true = plots.morans_i(w, x_true)
        # generated expression on the graph of the coordinates it was generated at
        w_gen = plots.knn_graph(s.pred_pos, MORAN_K) if s.gen_positions else w
        mi_gen = plots.morans_i(w_gen, x_gen)
        ok = np.flatnonzero(np.isfinite(mi_true))
        if ok.size == 0:
            continue
        order = ok[np.argsort(mi_true[ok])[::-1]]
        n_show = min(N_GENES_SHOWN, max(1, ok.size // 2))
        top, bottom = list(order[:n_show]), list(order[::-1][:n_show])
        bottom = [g for g in bottom if g not in top]
        if s.gen_positions:
            # generated cells at their generated positions, centred on the true slice's centre (no alignment)
            gen_coords = s.pred_pos - s.pred_pos.mean(0) + s.true_pos.mean(0)
            gen_label = "generated (at generated position)"
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


def _gene_estimate(sample) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(genes, true, estimate) as the metrics score them: the scored genes (the held-out ones in
    impute), and the posterior mean where the sample has one, else its prediction."""
    scored = sample_file.sample_from_anndata(sample.adata, source=str(sample.path))
    estimate = scored.mean_expression if scored.mean_expression is not None else scored.generated_expression
    return scored.genes, scored.true_expression, estimate


def gene_accuracy_section(groups, peer_samples) -> list[dict]:
    """pos_to_expr and impute: each gene's correlation over cells with the truth, AlphaSTomics'
    estimate beside every peer's, and the genes where it is furthest behind the peer with the best
    median. The median over genes is the judged figure; it can be high while the genes a
    biologist looks at first (a boundary, a stripe) are wrong, which only a per-gene view shows.
    Peers' cells are matched by cell id and genes by name; a peer whose cells differ is left out."""
    items = []
    for (sl, mode, method), ss in groups.items():
        if mode not in GENE_ACCURACY_MODES or method != MAIN_METHOD:
            continue
        main = ss[0]
        genes, true, estimate = _gene_estimate(main)
        correlations = {MAIN_METHOD: expression.gene_pearson(true, estimate)}
        cell_ids = pd.Index(main.adata.obs_names)
        peers = {p.method: p for p in peer_samples if p.slice_id == sl and p.mode == mode and p.method != MAIN_METHOD}
        for peer in (peers[name] for name in order_methods(peers)):
            order = matched_cells(peer, main, cell_ids, "the per-gene accuracy")
            if order is None:
                continue
            peer_genes, _, peer_estimate = _gene_estimate(peer)
            column = pd.Index(peer_genes).get_indexer(genes)
            r = np.full(len(genes), np.nan)
            found = column >= 0
            r[found] = expression.gene_pearson(true[:, found], peer_estimate[order][:, column[found]])
            correlations[peer.method] = r
        rivals = {m: float(np.nanmedian(r)) for m, r in correlations.items()
                  if m != MAIN_METHOD and not is_reference(m) and np.isfinite(r).any()}
        rival = max(rivals, key=rivals.get) if rivals else None
        ours = correlations[MAIN_METHOD]
        behind = ours - (correlations[rival] if rival else 0.0)
        ranked = [int(i) for i in np.argsort(np.where(np.isfinite(behind), behind, np.inf)) if np.isfinite(behind[i])]
        worst = [i for i in ranked if rival is None or behind[i] < 0][:N_WORST_GENES]
        rows = [{"gene": genes[i], "ours": fmt_value(ours[i]), "rival": fmt_value(correlations[rival][i]) if rival else "",
                 "behind": fmt_value(-behind[i]) if rival else ""} for i in worst]
        img = plots.gene_accuracy_figure(correlations, genes, rival, worst, f"{sl} · {mode}")
        medians = ", ".join(f"{m} {fmt_value(float(np.nanmedian(r)))}" for m, r in correlations.items() if np.isfinite(r).any())
        items.append({"title": f"{sl} · {mode}", "img": img, "mode": mode, "rival": rival, "rows": rows,
                      "n_genes": int(np.isfinite(ours).sum()), "medians": medians,
                      "estimate": "posterior mean" if sample_file.EXPR_PRED_MEAN in main.adata.layers else "first draw"})
    return items


def moran_figures(moran_panels: list[dict]) -> list[dict]:
    out = []
    for mode in order_modes({p["mode"] for p in moran_panels}):
        panels = [p for p in moran_panels if p["mode"] == mode]
        for start in range(0, len(panels), 9):
            chunk = panels[start : start + 9]
            out.append({"mode": mode, "img": plots.morans_scatter_figure(chunk), "n": len(chunk)})
    return out


def uncertainty_section(groups) -> tuple[list[dict], str]:
    """Per-cell positional uncertainty: ``obs['position_uncertainty']`` of a sample file (spread of its
    draws, see alphastomics.sample), else the spread over several sample files of different seeds."""
    items = []
    for (sl, mode, method), ss in groups.items():
        ss = [s for s in ss if s.gen_positions]
        if not ss:
            continue
        first = ss[0]
        if POSITION_UNCERTAINTY in first.adata.obs:
            spread = np.asarray(first.adata.obs[POSITION_UNCERTAINTY], dtype=np.float64)
            n_draws = int(first.meta.get("num_samples") or 0)
            seeds = ", ".join(str(v) for v in np.atleast_1d(first.meta.get("seeds", [])))
            shown = first.pred_pos if frame_of(first) == "shared" else plots.rigid_align(first.true_pos, first.pred_pos)[0]
        else:
            seeds = ", ".join(sorted({str(s.seed) for s in ss}))
            if len(ss) < 2 or len({str(s.seed) for s in ss}) < 2:
                continue
            if any(s.true_pos.shape != first.true_pos.shape for s in ss):
                log.warning("samples of %s differ in cell count; no uncertainty map", first.label)
                continue
            aligned = np.stack([plots.rigid_align(first.pred_pos, s.pred_pos)[0] for s in ss])
            mean = aligned.mean(0)
            spread = np.sqrt(np.mean(np.sum((aligned - mean) ** 2, axis=2), axis=0))
            shown, n_draws = plots.rigid_align(first.true_pos, mean)[0], len(ss)
        img = plots.uncertainty_figure(first.true_pos, shown, spread, n_draws)
        items.append({
            "title": first.label, "img": img, "n_samples": n_draws, "seeds": seeds,
            "median_spread": fmt_value(float(np.median(spread))), "n_cells": int(first.true_pos.shape[0]),
        })
    note = ""
    if not items:
        note = ("No sample file holds several draws of its generated coordinates (obs['position_uncertainty'], "
                "sampling.num_samples > 1), and no two sample files share slice, mode and method with different "
                "seeds, so there is no positional uncertainty to show.")
    return items, note


def perturbation_section(samples, dataset_dir: Path | None) -> list[dict]:
    """Samples drawn under another value of a slice covariate (``--slice-condition``): the predicted
    per-gene shift beside the one observed in the real slices that have that value."""
    from alphastomics.references import perturbation_shifts

    items = []
    if dataset_dir is None:
        return items
    for s in samples:
        if not s.gen_expression:
            continue
        mask = sample_file.measured_genes(s.adata)
        genes = [str(g) for g in s.adata.var_names[mask]]
        try:
            shifts = perturbation_shifts(s.adata, s.slice_id, dataset_dir, genes, mask, s.true_pos.shape[1])
        except Exception as err:  # noqa: BLE001 - a figure must not stop the report
            log.warning("%s: perturbation shifts not drawn (%s)", s.label, err)
            continue
        if shifts is None:
            continue
        condition = ", ".join(f"{k}={v}" for k, v in shifts.requested.items())
        items.append({
            "title": f"{s.label} under {condition}",
            "img": plots.shift_scatter_figure(shifts.predicted, shifts.observed, genes, f"{s.slice_id} under {condition}\nPearson r = "
                                              f"{shifts.agreement['perturbation_shift_pearson']:.3f}"),
            "baseline": ", ".join(f"{k}={v}" for k, v in shifts.baseline.items()) or "unconditional",
            "observed_from": f"{', '.join(shifts.condition_slices)} minus {', '.join(shifts.baseline_slices)}",
            "file": s.path.name, "predicted_from": shifts.predicted_from,
            **{k: fmt_value(v) for k, v in shifts.agreement.items()},
        })
    return items


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
