"""The report's 3D view: true and generated cells of 3D slices as compact point data for the
plain-JavaScript viewer of ``templates/_view3d.html.j2`` (a canvas that rotates and zooms).

One view per (held-out slice, mode, method) whose mode generates positions, for slices with a
real extent along every axis (``is_3d``): expr_to_pos shows its consensus layout where the sample
has one, else its draw, placed as the tissue section places it; joint shows its first draw,
centred on the true slice, unaligned. Cells are coloured by cell type (where the sample has
types) or by a gene (true expression; the generated one where the mode generates it).

Arrays travel base64-encoded in one JSON block, each stored once (the true slice shared by its
modes, the given expression of expr_to_pos shared with the truth): positions as uint16 steps of
their bounding box, gene values as uint8 steps of each gene's 1st-99th percentile of the true
values (the scale of the gene maps), cell types as uint16 codes. At most ``MAX_POINTS`` cells per
panel (a seeded subsample, said in the caption) and ``GENE_VALUE_BUDGET`` cell x gene values.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import numpy as np

from alphastomics.io import sample_file
from alphastomics.io.sample_file import CELL_TYPE_DRAWN, EXPR_PRED, SPATIAL_PRED, SPATIAL_PRED_CONSENSUS
from alphastomics.report import plots
from alphastomics.report.sections import MORAN_K, frame_of, joint_colours, place_generated

log = logging.getLogger(__name__)

MAX_POINTS = 20_000  # cells drawn per panel; larger slices are subsampled with SEED
SEED = 0
GENE_VALUE_BUDGET = 1_000_000  # cells x genes per panel; beyond it only the most spatially variable genes
MIN_EXTENT = 0.01  # the narrowest axis, as a fraction of the widest: below it a slice is flat (no 3D view)
TYPE_KEY = "type"  # the colour key of cell types; a gene's is its index


def is_3d(positions) -> bool:
    """Coordinates with three axes and a real extent along each (a flat slice stored with a
    constant z is not 3D)."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        return False
    pos = pos[np.isfinite(pos).all(1)]
    if len(pos) < 4:
        return False
    extent = np.ptp(pos, axis=0)
    return bool(extent.max() > 0 and extent.min() > MIN_EXTENT * extent.max())


def paired(s) -> bool:
    """Generated cell i stands for true cell i: only positions generated (not joint, where both are)."""
    return "expression" not in s.generated


class Pool:
    """Base64 arrays, each stored once; a panel refers to an array by its index."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, array: np.ndarray) -> int:
        text = base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")
        if text not in self._index:
            self._index[text] = len(self.items)
            self.items.append(text)
        return self._index[text]


def quantised_positions(points: np.ndarray) -> tuple[np.ndarray, list[float], list[float]]:
    """(n, 3) little-endian uint16 steps of the bounding box, its lower corner and step per axis:
    the viewer's x = lo + q * step."""
    lo = points.min(0)
    step = np.ptp(points, axis=0) / 65535.0
    step[step <= 0] = 1.0
    q = np.rint((points - lo) / step).clip(0, 65535).astype("<u2")
    return q, lo.tolist(), step.tolist()


def quantised_genes(values: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(genes, n) uint8: each gene's values as 255 steps between ``lo`` and ``hi`` (clipped), gene-major
    so that the viewer reads one gene as one contiguous run."""
    scaled = (values - lo) / (hi - lo)
    return np.rint(np.nan_to_num(scaled, nan=0.0).clip(0, 1) * 255).astype(np.uint8).T


def gene_choice(points: np.ndarray, values: np.ndarray, n_points: int) -> tuple[np.ndarray, int]:
    """Indices of the genes embedded (alphabetical order of their columns kept) and the most spatially
    variable one (Moran's I of the true expression over the kNN graph of the drawn true cells):
    every gene where the budget allows, else the most spatially variable ones."""
    n_genes = values.shape[1]
    ok = np.isfinite(points).all(1)
    mi = plots.morans_i(plots.knn_graph(points[ok], MORAN_K), values[ok]) if ok.sum() > MORAN_K + 1 else np.zeros(n_genes)
    order = np.argsort(-np.nan_to_num(np.asarray(mi, dtype=np.float64), nan=-np.inf), kind="stable")
    keep = min(n_genes, max(1, GENE_VALUE_BUDGET // max(n_points, 1)))
    return np.sort(order[:keep]), int(order[0])


def _types_of_generated(s, palette: dict, dataset_dir: Path | None) -> tuple[np.ndarray | None, str]:
    """Cell types of the generated cells of a sample and how they were found."""
    if paired(s):
        return s.cell_types, "their true types (the same cells)"
    if CELL_TYPE_DRAWN in s.adata.obs:
        labels = sample_file.cell_type_labels(s.adata.obs[CELL_TYPE_DRAWN])
        return np.array([plots.UNKNOWN_LABEL if v is None else v for v in labels], dtype=str), \
            f"the type each was drawn with (obs['{CELL_TYPE_DRAWN}'])"
    if s.cell_types is None:
        return None, ""
    _, predicted, used_palette, _ = joint_colours(s, dataset_dir, palette)
    if used_palette is None:
        return None, "no types (none could be predicted)"
    return np.asarray(predicted).astype(str), "predicted by the metrics' kNN classifier of the training slices"


def _generated(s) -> tuple[np.ndarray, str]:
    """Generated coordinates as the view draws them, and what they are."""
    if not paired(s):
        shift = np.nanmean(s.true_pos, 0) - np.nanmean(s.pred_pos, 0)
        return s.pred_pos + shift, (f"obsm['{SPATIAL_PRED}'], the first draw, centred on the true slice and not aligned "
                                    "(generated cells are new cells, not the true ones)")
    consensus = SPATIAL_PRED_CONSENSUS in s.adata.obsm
    own = np.asarray(s.adata.obsm[SPATIAL_PRED_CONSENSUS], dtype=np.float64) if consensus else s.pred_pos
    placed, _ = place_generated(s, own)
    frame = ("as generated (a shared frame)" if frame_of(s) == "shared"
             else "rotated or reflected and translated onto the true cells, no scaling")
    what = f"the consensus layout of the draws (obsm['{SPATIAL_PRED_CONSENSUS}'])" if consensus else f"obsm['{SPATIAL_PRED}']"
    return placed, f"{what}, {frame}"


def _panel(pool: Pool, label: str, points: np.ndarray, codes: np.ndarray | None, genes: np.ndarray | None) -> dict:
    """One canvas: its finite cells' quantised positions, type codes and gene values."""
    ok = np.isfinite(points).all(1)
    q, lo, step = quantised_positions(points[ok])
    return {"label": label, "n": int(ok.sum()), "dropped": int((~ok).sum()), "pos": pool.add(q), "lo": lo, "step": step,
            "types": None if codes is None else pool.add(codes[ok].astype("<u2")),
            "genes": None if genes is None else pool.add(np.ascontiguousarray(genes[:, ok]))}


def sample_view(s, pool: Pool, palette: dict, dataset_dir: Path | None, view_id: str) -> dict:
    """The view of one sample: its true and generated panels and what the template shows around them."""
    adata = s.adata
    mask = sample_file.measured_genes(adata)
    names = np.asarray(adata.var_names[mask]).astype(str)
    n = s.true_pos.shape[0]
    idx = plots.subsample(n, MAX_POINTS, SEED)
    true_pts = s.true_pos[idx]
    x_true = sample_file.dense(adata.X[idx])[:, mask].astype(np.float64)
    chosen, top = gene_choice(true_pts, x_true, idx.size)
    lo = np.nanpercentile(x_true[:, chosen], 1, axis=0)
    hi = np.nanpercentile(x_true[:, chosen], 99, axis=0)
    hi = np.where(hi > lo, hi, lo + 1e-6)
    true_genes = quantised_genes(x_true[:, chosen], lo, hi)
    expression_generated = "expression" in s.generated and EXPR_PRED in adata.layers
    if expression_generated:
        x_gen = sample_file.dense(adata.layers[EXPR_PRED][idx])[:, mask].astype(np.float64)
        gen_genes = quantised_genes(x_gen[:, chosen], lo, hi)
    else:
        gen_genes = true_genes  # expr_to_pos: the expression is given, the true one

    gen_types, types_how = _types_of_generated(s, palette, dataset_dir)
    type_names = sorted({str(t) for labels in (s.cell_types, gen_types) if labels is not None for t in labels})
    missing = plots.cell_type_palette([t for t in type_names if t not in palette])
    colours = [palette.get(t) or missing[t] for t in type_names]
    code = {t: i for i, t in enumerate(type_names)}

    def codes(labels):
        return None if labels is None else np.array([code[str(t)] for t in np.asarray(labels)[idx]], dtype=np.uint16)

    generated, placement = _generated(s)
    panels = [_panel(pool, "true", true_pts, codes(s.cell_types), true_genes),
              _panel(pool, "generated", generated[idx], codes(gen_types), gen_genes)]
    has_types = bool(type_names) and s.cell_types is not None
    extent = np.ptp(true_pts[np.isfinite(true_pts).all(1)], axis=0)
    shown = (f"{idx.size:,} of {n:,} cells drawn per panel (a random subsample, seed {SEED})" if idx.size < n
             else f"all {n:,} cells drawn")
    dropped = panels[1]["dropped"]
    genes_said = (f"any of the {mask.sum()} measured genes" if chosen.size == mask.sum() else
                  f"any of the {chosen.size} most spatially variable of the {mask.sum()} measured genes (Moran's I)")
    gene_values = ("the generated expression" if expression_generated else
                   "the true expression, which this mode is given")
    return {
        "id": view_id,
        "title": s.label,
        "file": s.path.name,
        "subsampled": bool(idx.size < n),
        "shown": shown + (f"; {dropped:,} generated cell(s) with non-finite coordinates left out" if dropped else ""),
        "placement": placement,
        "colour_note": (f"cell types: true cells their annotated types, generated cells {types_how}; " if has_types else "")
                       + f"genes: {genes_said}, on the scale of the true values' 1st-99th percentile; generated cells show {gene_values}",
        "has_types": has_types,
        "genes": [{"key": int(j), "name": str(names[c])} for j, c in enumerate(chosen)],
        "data": {
            "id": view_id,
            "panels": panels,
            "types": type_names,
            "colours": colours,
            "genes": [str(names[c]) for c in chosen],
            "ranges": [[float(a), float(b)] for a, b in zip(lo, hi)],
            # screen x, y and depth: the widest, second and narrowest axes of the true slice
            "axes": [int(a) for a in np.argsort(-extent, kind="stable")],
            "colour": TYPE_KEY if has_types else int(np.flatnonzero(chosen == top)[0]),
        },
    }


def view3d_section(groups, palette: dict, dataset_dir: Path | None = None) -> dict:
    """The views of every sample (grouped as ``inputs.sample_groups``) whose mode generates positions
    and whose slice is 3D; ``{"views": [], ...}`` for a 2D dataset. ``payload`` is what the viewer reads."""
    pool = Pool()
    views = []
    for ss in groups.values():
        s = ss[0]
        if not s.gen_positions or not is_3d(s.true_pos):
            continue
        try:
            views.append(sample_view(s, pool, palette, dataset_dir, f"view3d-{len(views)}"))
        except Exception as err:  # noqa: BLE001 - a figure must not stop the report
            log.warning("%s: no 3D view (%s: %s)", s.label, type(err).__name__, err)
    return {"views": views, "payload": {"pool": pool.items, "views": [v["data"] for v in views]}}
