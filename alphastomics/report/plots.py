"""Matplotlib figures of the report, returned as ``data:`` URIs ready for an ``<img src=...>``.

Every function takes plain arrays (no AnnData), draws one figure with labelled axes and a legend
or colour bar outside the data, and closes it. Geometry helpers (Procrustes alignment, kNN graph,
Moran's I) live here too because the figures are their only users in the report.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: the report is rendered in batch jobs
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy import sparse  # noqa: E402
from scipy.linalg import orthogonal_procrustes  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from alphastomics.metrics.spatial import morans_i  # noqa: F401 (one Moran's I for the table and the figures)

DPI = 110
MAX_POINTS = 30_000  # cells drawn per panel; larger slices are randomly subsampled (seed 0)
UNKNOWN_LABEL = "unknown"
UNKNOWN_COLOUR = "#b0b0b0"
AXIS_NAMES = ("x", "y", "z")
PROJECTIONS_3D = ((0, 1), (0, 2), (1, 2))

plt.rcParams.update(
    {
        "font.size": 10,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "legend.fontsize": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "svg.fonttype": "none",
    }
)


# ----------------------------------------------------------------------------------------------
# encoding


def to_data_uri(fig, fmt: str = "png") -> str:
    """Encode a figure as a base64 ``data:`` URI (PNG or SVG) and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    data = buf.getvalue()
    if fmt == "png":
        data = _palette_png(data)
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _palette_png(data: bytes) -> bytes:
    """Re-encode a PNG with a 256-colour palette: scatter plots use few colours, so the file shrinks
    several-fold with no visible loss."""
    from PIL import Image  # pillow is a dependency of matplotlib

    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(data) else data


# ----------------------------------------------------------------------------------------------
# geometry


def rigid_align(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, float]:
    """Map ``pred`` onto ``true`` by the best translation and orthogonal transform (rotation or
    reflection), with no scaling: a tissue of the wrong size stays the wrong size. Returns the
    aligned points and their RMS distance to the true ones."""
    true = np.asarray(true, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    ok = np.isfinite(true).all(1) & np.isfinite(pred).all(1)
    if ok.sum() < true.shape[1] + 1:
        return np.full_like(true, np.nan), float("nan")
    mu_t, mu_p = true[ok].mean(0), pred[ok].mean(0)
    rot, _ = orthogonal_procrustes(pred[ok] - mu_p, true[ok] - mu_t)
    aligned = (pred - mu_p) @ rot + mu_t
    return aligned, float(np.sqrt(np.mean(np.sum((aligned[ok] - true[ok]) ** 2, axis=1))))


def knn_graph(coords: np.ndarray, k: int = 10) -> sparse.csr_matrix:
    """Symmetric binary kNN graph (self excluded) of the points."""
    coords = np.asarray(coords, dtype=np.float64)
    n = coords.shape[0]
    k = int(min(k, max(n - 1, 1)))
    _, idx = cKDTree(coords).query(coords, k=k + 1)
    rows = np.repeat(np.arange(n), k)
    cols = np.asarray(idx)[:, 1:].ravel()
    w = sparse.csr_matrix((np.ones(rows.size), (rows, cols)), shape=(n, n))
    return w.maximum(w.T).tocsr()


def subsample(n: int, max_points: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def point_size(n: int, panel_height: float = 4.0, ratio: float = 1.0) -> float:
    """Marker area (points^2) so that ``n`` cells fill a panel of this height (inches) and width/height ratio."""
    area = panel_height * panel_height * ratio
    return float(np.clip(1100.0 * area / max(n, 1), 0.3, 14.0))


def best_projection(coords: np.ndarray) -> tuple[int, int]:
    """The two axes with the largest spread (for 2D maps of 3D data)."""
    if coords.shape[1] <= 2:
        return (0, 1)
    spread = np.ptp(coords, axis=0)
    a, b = sorted(np.argsort(spread)[::-1][:2])
    return int(a), int(b)


# ----------------------------------------------------------------------------------------------
# colours


def cell_type_palette(labels: Sequence[str]) -> dict[str, str]:
    """A fixed colour per cell type (sorted order), shared by every figure of a report."""
    names = sorted({str(x) for x in labels if str(x) != UNKNOWN_LABEL})
    cmaps = ["tab10"] if len(names) <= 10 else ["tab20", "tab20b", "tab20c"]
    colours = [to_hex(c) for name in cmaps for c in plt.get_cmap(name).colors]
    if len(names) > len(colours):
        colours = [to_hex(c) for c in plt.get_cmap("turbo")(np.linspace(0.05, 0.95, len(names)))]
    palette = {name: colours[i] for i, name in enumerate(names)}
    palette[UNKNOWN_LABEL] = UNKNOWN_COLOUR
    return palette


def _set_limits(ax, pts_list: Sequence[np.ndarray], a: int, b: int) -> None:
    allp = np.concatenate([p[:, [a, b]] for p in pts_list])
    lo, hi = np.nanmin(allp, axis=0), np.nanmax(allp, axis=0)
    pad = 0.03 * np.maximum(hi - lo, 1e-9)
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
    ax.set_aspect("equal", adjustable="box")
    # a narrow panel (a tall strip such as an osmFISH section) has room for fewer tick labels
    ratio = (hi[0] - lo[0] + 2 * pad[0]) / (hi[1] - lo[1] + 2 * pad[1])
    ax.xaxis.set_major_locator(MaxNLocator(nbins=3 if ratio < 0.6 else 5))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=3 if ratio > 1.7 else 5))


def _ratio(pts_list: Sequence[np.ndarray], a: int, b: int) -> float:
    """Width / height of the data in projection (a, b), clipped to a sane range."""
    allp = np.concatenate([p[:, [a, b]] for p in pts_list])
    span = np.maximum(np.nanmax(allp, axis=0) - np.nanmin(allp, axis=0), 1e-9)
    return float(np.clip(span[0] / span[1], 0.35, 3.0))


def _panel_grid(nrows: int, ratios: Sequence[float], extra_w: float = 0.0, h_max: float = 3.8, w_avail: float = 10.0):
    """Figure whose panel widths follow the data's aspect ratios (equal-aspect maps with no
    whitespace between rows); ``extra_w`` inches are kept for a legend or colour bar."""
    h = min(h_max, w_avail / sum(ratios))
    width = h * sum(ratios) + 0.75 * len(ratios) + extra_w
    height = nrows * (h + 0.85)
    fig, axes = plt.subplots(nrows, len(ratios), figsize=(width, height), layout="constrained", squeeze=False,
                             gridspec_kw={"width_ratios": list(ratios)})
    return fig, axes, h


def _legend_layout(names: Sequence[str]) -> tuple[int, float]:
    """(columns, inches) of a cell-type legend, so the panels keep their width beside a long one
    (33 osmFISH types with names such as "Oligodendrocyte Precursor cells" squeezed them to slivers)."""
    ncols = 1 if len(names) <= 22 else 2
    longest = max((len(str(n)) for n in names), default=8)
    return ncols, ncols * (0.45 + 0.068 * max(longest, len("cell type"))) + 0.2


def _principal_axis_hue(points: np.ndarray) -> np.ndarray:
    """Each point's position along the principal axis of the set: the colour of a cell in figures
    without cell types, the same in every panel."""
    centred = points - points.mean(0)
    return centred @ np.linalg.svd(centred, full_matrices=False)[2][0]


def _cell_type_legend(fig, palette: Mapping[str, str], names: Sequence[str], ncols: int, title: str = "cell type") -> None:
    handles = [Line2D([], [], marker="o", ls="", color=palette[name], markersize=7, label=name) for name in names]
    fig.legend(handles=handles, title=title, loc="outside right center", frameon=False, ncols=ncols)


def _scatter_labels(ax, pts, labels, palette, a, b, size):
    colours = np.array([palette.get(str(x), UNKNOWN_COLOUR) for x in labels])
    ax.scatter(pts[:, a], pts[:, b], c=colours, s=size, linewidths=0, rasterized=True)


# ----------------------------------------------------------------------------------------------
# figures


def tissue_figure(
    true: np.ndarray,
    aligned: np.ndarray,
    labels: Sequence[str] | None,
    palette: Mapping[str, str] | None,
    units: str = "source units",
    generated_title: str = "generated (aligned)",
) -> str:
    """True vs aligned generated coordinates of the same cells.

    Coloured by cell type when ``labels`` is given; otherwise by each cell's true position along
    the principal axis of the slice, so that a cell keeps its colour in both panels and misplaced
    regions show up as colour jumps. 2D: true | generated | per-cell displacement. 3D: a row
    for true and one for generated, each with the xy, xz and yz projections.
    """
    n, d = true.shape
    idx = subsample(n)
    t, g = true[idx], aligned[idx]
    has_labels = labels is not None
    if has_labels:
        lab = np.asarray([str(x) for x in np.asarray(labels)[idx]])
    else:
        hue = _principal_axis_hue(t)

    projections = [(0, 1)] if d == 2 else list(PROJECTIONS_3D)
    if has_labels:
        present = [name for name in palette if name in set(lab)]
        legend_cols, extra = _legend_layout(present)
    else:
        extra = 1.2
    if d == 2:
        r = _ratio([t, g], 0, 1)
        fig, axes, h = _panel_grid(1, [r, r, r], extra_w=extra + 1.0, h_max=4.0, w_avail=10.5)
        axes = axes[0]
        grid = [[(axes[0], t, "true"), (axes[1], g, generated_title)]]
    else:
        ratios = [_ratio([t, g], a, b) for a, b in projections]
        fig, axes, h = _panel_grid(2, ratios, extra_w=extra, h_max=3.6, w_avail=10.5)
        grid = [[(axes[r, c], pts, name) for c in range(3)] for r, (pts, name) in enumerate(((t, "true"), (g, generated_title)))]
    size = point_size(idx.size, h, float(np.mean(ratios if d == 3 else [r])))

    mappable = None
    for r, row in enumerate(grid):
        for c, (ax, pts, name) in enumerate(row):
            a, b = projections[c] if d == 3 else projections[0]
            if has_labels:
                _scatter_labels(ax, pts, lab, palette, a, b, size)
            else:
                mappable = ax.scatter(pts[:, a], pts[:, b], c=hue, cmap="viridis", s=size, linewidths=0, rasterized=True)
            _set_limits(ax, [t, g], a, b)
            ax.set_xlabel(f"{AXIS_NAMES[a]} ({units})")
            ax.set_ylabel(f"{AXIS_NAMES[b]} ({units})")
            title = name if d == 2 else f"{name}: {AXIS_NAMES[a]}{AXIS_NAMES[b]} projection"
            ax.set_title(title)

    if d == 2:
        err = np.linalg.norm(g - t, axis=1)
        ax = axes[2]
        sc = ax.scatter(t[:, 0], t[:, 1], c=err, cmap="magma_r", s=size, linewidths=0, rasterized=True,
                        vmin=0, vmax=float(np.nanpercentile(err, 99)) or None)
        _set_limits(ax, [t, g], 0, 1)
        ax.set_title("displacement of each cell\n(at true position)")
        ax.set_xlabel(f"x ({units})")
        ax.set_ylabel(f"y ({units})")
        fig.colorbar(sc, ax=ax, shrink=0.9, label=f"displacement ({units})")

    if has_labels:
        _cell_type_legend(fig, palette, present, legend_cols)
    elif mappable is not None:
        target = axes if d == 3 else list(axes[:2])
        fig.colorbar(mappable, ax=target, shrink=0.7 if d == 3 else 0.9, label="true position along principal axis")
    return to_data_uri(fig)


def layouts_figure(
    true: np.ndarray,
    layouts: Sequence[tuple[str, np.ndarray]],
    labels: Sequence[str] | None,
    palette: Mapping[str, str] | None,
    units: str = "source units",
    per_row: int = 3,
) -> str:
    """The true slice and several layouts of its cells, ``(title, coordinates)`` each, in one grid
    of equal panels (``per_row`` to a row), on the true slice's two widest axes and one scale.

    Coloured as :func:`tissue_figure`: by cell type, or by each cell's true position along the
    slice's principal axis, so that a cell has one colour in every panel."""
    n = true.shape[0]
    idx = subsample(n)
    panels = [("true", true[idx])] + [(title, np.asarray(coords)[idx]) for title, coords in layouts]
    a, b = best_projection(true)
    everything = [pts for _, pts in panels]
    r = _ratio(everything, a, b)
    columns = min(per_row, len(panels))
    rows = -(-len(panels) // columns)
    has_labels = labels is not None
    if has_labels:
        lab = np.asarray([str(x) for x in np.asarray(labels)[idx]])
        present = [name for name in palette if name in set(lab)]
        legend_cols, extra = _legend_layout(present)
    else:
        hue = _principal_axis_hue(true[idx])
        extra = 1.2
    fig, axes, h = _panel_grid(rows, [r] * columns, extra_w=extra, h_max=3.4, w_avail=10.5)
    size = point_size(idx.size, h, r)
    mappable = None
    for i, ax in enumerate(axes.flat):
        if i >= len(panels):
            ax.set_axis_off()
            continue
        title, pts = panels[i]
        if has_labels:
            _scatter_labels(ax, pts, lab, palette, a, b, size)
        else:
            mappable = ax.scatter(pts[:, a], pts[:, b], c=hue, cmap="viridis", s=size, linewidths=0, rasterized=True)
        _set_limits(ax, everything, a, b)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"{AXIS_NAMES[a]} ({units})")
        ax.set_ylabel(f"{AXIS_NAMES[b]} ({units})")
    if has_labels:
        _cell_type_legend(fig, palette, present, legend_cols)
    elif mappable is not None:
        fig.colorbar(mappable, ax=axes, shrink=0.7, label="true position along principal axis")
    return to_data_uri(fig)


def side_by_side_figure(
    true: np.ndarray,
    generated: np.ndarray,
    true_colour: np.ndarray,
    generated_colour: np.ndarray,
    palette: Mapping[str, str] | None,
    colour_label: str,
    units: str = "source units",
) -> str:
    """A real slice and a generated one, each in its own frame (no alignment: the generated cells
    are not the real ones), on the same scale. 2D: true | generated, side by side; 3D: a row for
    each, with the xy, xz and yz projections. Colours are cell-type labels (with ``palette``) or a
    continuous value shared by both panels."""
    d = true.shape[1]
    ti, gi = subsample(len(true)), subsample(len(generated))
    t, g = true[ti] - true[ti].mean(0), generated[gi] - generated[gi].mean(0)
    projections = [(0, 1)] if d == 2 else list(PROJECTIONS_3D)
    # per axis, so that a long slice is not drawn in a square of blank space; centred on the mean,
    # a lopsided slice reaches further on one side than half its extent
    half = np.maximum(np.abs(np.vstack([t, g])).max(0), 1e-9) * 1.05
    ratios = [float(np.clip(half[a] / half[b], 0.35, 3.0)) for a, b in projections]
    slices = ((t, true_colour, ti, "true slice"), (g, generated_colour, gi, "generated slice"))
    if d == 2:
        panels = [[(*one, projections[0]) for one in slices]]
        ratios = ratios * 2
    else:
        panels = [[(*one, p) for p in projections] for one in slices]
    categorical = palette is not None
    if categorical:
        present = set(np.asarray(true_colour).astype(str)) | set(np.asarray(generated_colour).astype(str))
        legend_names = [n for n in palette if n in present]
        legend_cols, legend_w = _legend_layout(legend_names)
    fig, axes, h = _panel_grid(len(panels), ratios, extra_w=legend_w if categorical else 1.2, h_max=3.6,
                               w_avail=3.6 * len(projections) if d == 3 else 8.4)
    size = point_size(max(ti.size, gi.size), h, float(np.mean(ratios)))
    mappable = None
    values = np.r_[np.asarray(true_colour)[ti], np.asarray(generated_colour)[gi]] if not categorical else None
    vmin, vmax = (float(np.nanpercentile(values, 1)), float(np.nanpercentile(values, 99))) if values is not None else (None, None)
    for r, row in enumerate(panels):
        for c, (pts, colour, idx, name, (a, b)) in enumerate(row):
            ax = axes[r, c]
            if categorical:
                _scatter_labels(ax, pts, np.asarray(colour)[idx], palette, a, b, size)
            else:
                mappable = ax.scatter(pts[:, a], pts[:, b], c=np.asarray(colour)[idx], cmap="viridis", vmin=vmin, vmax=vmax,
                                      s=size, linewidths=0, rasterized=True)
            ax.set_xlim(-half[a], half[a])
            ax.set_ylim(-half[b], half[b])
            ax.set_aspect("equal", adjustable="box")
            ax.set_xlabel(f"{AXIS_NAMES[a]} ({units}, centred)")
            ax.set_ylabel(f"{AXIS_NAMES[b]} ({units}, centred)")
            ax.set_title(name if d == 2 else f"{name}: {AXIS_NAMES[a]}{AXIS_NAMES[b]} projection")
    if categorical:
        _cell_type_legend(fig, palette, legend_names, legend_cols, title=colour_label)
    elif mappable is not None:
        fig.colorbar(mappable, ax=axes, shrink=0.8, label=colour_label)
    return to_data_uri(fig)


def gene_maps_figure(
    true_coords: np.ndarray,
    gen_coords: np.ndarray,
    true_expr: np.ndarray,
    gen_expr: np.ndarray,
    genes: Sequence[str],
    morans_true: Sequence[float],
    morans_gen: Sequence[float],
    gen_label: str,
    units: str = "source units",
) -> str:
    """One row per gene: true map | generated map, on a shared colour scale per gene."""
    n = true_coords.shape[0]
    idx = subsample(n)
    a, b = best_projection(true_coords)
    rows = len(genes)
    r = _ratio([true_coords[idx], gen_coords[idx]], a, b)
    fig, axes, h = _panel_grid(rows, [r, r], extra_w=1.3, h_max=3.4, w_avail=8.6)
    size = point_size(idx.size, h, r)
    for i, gene in enumerate(genes):
        tv, gv = true_expr[idx, i], gen_expr[idx, i]
        vmin = float(np.nanpercentile(tv, 1))
        vmax = float(np.nanpercentile(tv, 99))
        if vmax <= vmin:
            vmax = vmin + 1e-6
        order = np.argsort(tv, kind="stable")  # draw high values last so hot spots are visible
        sc = None
        for c, (coords, vals, name, mi) in enumerate(
            ((true_coords, tv, "true", morans_true[i]), (gen_coords, gv, gen_label, morans_gen[i]))
        ):
            ax = axes[i, c]
            pts = coords[idx]
            o = order if c == 0 else np.argsort(vals, kind="stable")
            sc = ax.scatter(pts[o, a], pts[o, b], c=vals[o], cmap="viridis", vmin=vmin, vmax=vmax, s=size,
                            linewidths=0, rasterized=True)
            _set_limits(ax, [true_coords[idx], gen_coords[idx]], a, b)
            # two lines at a smaller size: narrow panels (tall 3D slabs) made one-line titles overlap
            ax.set_title(f"{gene} — {name}\nMoran's I {mi:.2f}", fontsize=10)
            ax.set_xlabel(f"{AXIS_NAMES[a]} ({units})")
            ax.set_ylabel(f"{AXIS_NAMES[b]} ({units})")
        fig.colorbar(sc, ax=axes[i, :], shrink=0.9, label="expression")
    return to_data_uri(fig)


def morans_scatter_figure(
    panels: Sequence[dict],
) -> str:
    """Moran's I per gene, true (x) vs generated (y), one panel per sample.

    Each panel dict: ``title``, ``true``, ``generated``, ``genes``, ``highlight`` (gene names).
    """
    n_panels = len(panels)
    cols = min(n_panels, 3)
    rows = int(np.ceil(n_panels / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 4.3 * rows), layout="constrained", squeeze=False)
    for i, p in enumerate(panels):
        ax = axes[i // cols, i % cols]
        t = np.asarray(p["true"], dtype=float)
        g = np.asarray(p["generated"], dtype=float)
        ok = np.isfinite(t) & np.isfinite(g)
        ax.scatter(t[ok], g[ok], s=14, color="#3b6ea8", alpha=0.75, linewidths=0)
        lo = float(np.nanmin(np.r_[t[ok], g[ok], 0.0])) if ok.any() else 0.0
        hi = float(np.nanmax(np.r_[t[ok], g[ok], 0.1])) if ok.any() else 1.0
        pad = 0.05 * (hi - lo)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#888888", lw=1, ls="--", label="y = x")
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_aspect("equal", adjustable="box")
        genes = list(p.get("genes", []))
        highlight = [n for n in p.get("highlight", []) if n in genes and ok[genes.index(n)]]
        low = sorted((n for n in highlight if t[genes.index(n)] < np.nanmedian(t[ok])), key=lambda n: g[genes.index(n)])
        hl_idx = [genes.index(n) for n in highlight]
        if hl_idx:
            ax.scatter(t[hl_idx], g[hl_idx], s=22, color="#d9622b", linewidths=0, zorder=3, label="mapped genes")
        box = dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85)
        leader = dict(arrowstyle="-", color="#777777", lw=0.6, shrinkA=0, shrinkB=2)
        high = sorted((n for n in highlight if n not in low), key=lambda n: -g[genes.index(n)])
        for name in highlight:
            j = genes.index(name)
            # labels of each group are stacked by rank with leader lines, so near-equal points stay readable:
            # low-I genes to the right of their point, high-I genes below-left of theirs
            if name in low:
                rank = low.index(name)
                ann = ax.annotate(name, (t[j], g[j]), xytext=(36, 13 * rank - 6), textcoords="offset points",
                                  fontsize=8, color="#333333", va="center", bbox=box, arrowprops=leader)
            else:
                rank = high.index(name)
                ann = ax.annotate(name, (t[j], g[j]), xytext=(-30, -14 * rank - 12), textcoords="offset points",
                                  fontsize=8, color="#333333", va="center", ha="right", bbox=box, arrowprops=leader)
            ann.set_in_layout(False)  # labels must never move or shrink the axes
        if ok.sum() >= 3 and np.std(t[ok]) > 0 and np.std(g[ok]) > 0:
            r = float(np.corrcoef(t[ok], g[ok])[0, 1])
            mad = float(np.mean(np.abs(t[ok] - g[ok])))
            ax.set_title(f"{p['title']}\nPearson r = {r:.3f}, mean |Δ| = {mad:.3f}")
        else:
            ax.set_title(p["title"])
        ax.set_xlabel("Moran's I, true expression")
        ax.set_ylabel("Moran's I, generated expression")
        ax.grid(True, color="#eeeeee", lw=0.6)
        ax.set_axisbelow(True)
    for j in range(n_panels, rows * cols):
        axes[j // cols, j % cols].set_visible(False)
    return to_data_uri(fig)


def gene_accuracy_figure(correlations: Mapping[str, np.ndarray], genes: Sequence[str], rival: str | None,
                         named: Sequence[int], title: str) -> str:
    """Per-gene correlation of each method's estimate with the truth. Left: every method's genes
    sorted from best to worst (a curve per method; the judged median where it crosses the middle).
    Right, where a peer is given as ``rival``: AlphaSTomics (y) against it (x) gene by gene, the
    genes of ``named`` (indices) labelled."""
    methods = list(correlations)
    others = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 1]  # tab10's orange is AlphaSTomics'
    colours = {m: ("#d9622b" if i == 0 else others[(i - 1) % len(others)]) for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, 2 if rival else 1, figsize=(10.0 if rival else 5.2, 4.3), layout="constrained", squeeze=False)
    ax = axes[0, 0]
    for m in methods:
        r = np.sort(np.asarray(correlations[m], dtype=float)[np.isfinite(correlations[m])])[::-1]
        if r.size:
            ax.plot(np.linspace(0, 1, r.size), r, color=colours[m], lw=2.2 if m == methods[0] else 1.2,
                    label=f"{m} (median {np.median(r):.2f})")
    ax.axvline(0.5, color="#aaaaaa", lw=0.8, ls=":")
    ax.set_xlabel("fraction of genes, best to worst")
    ax.set_ylabel("Pearson r over cells, per gene")
    ax.set_title(f"{title}: every gene")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(True, color="#eeeeee", lw=0.6)
    if rival:
        ax = axes[0, 1]
        ours, theirs = np.asarray(correlations[methods[0]], float), np.asarray(correlations[rival], float)
        ok = np.isfinite(ours) & np.isfinite(theirs)
        ax.scatter(theirs[ok], ours[ok], s=14, color="#3b6ea8", alpha=0.75, linewidths=0)
        lo = float(min(np.nanmin(np.r_[ours[ok], theirs[ok]]), 0.0)) if ok.any() else -1.0
        ax.plot([lo, 1], [lo, 1], color="#888888", lw=1, ls="--", label="y = x")
        box = dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85)
        for rank, j in enumerate(i for i in named if ok[i]):
            ax.scatter([theirs[j]], [ours[j]], s=22, color="#d9622b", linewidths=0, zorder=3)
            # alternate sides, so neighbouring labels rarely cover each other (the table below has the values)
            right = rank % 2 == 0
            ann = ax.annotate(str(genes[j]), (theirs[j], ours[j]), xytext=(5 if right else -5, 3 if right else -9),
                              textcoords="offset points", fontsize=8, color="#333333", ha="left" if right else "right",
                              bbox=box, clip_on=True)
            ann.set_in_layout(False)
        ax.set_xlim(lo - 0.05, 1.02)
        ax.set_ylim(lo - 0.05, 1.02)
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(f"{rival}: Pearson r per gene")
        ax.set_ylabel(f"{methods[0]}: Pearson r per gene")
        ax.set_title(f"gene by gene against {rival}; below the line: behind it")
        ax.grid(True, color="#eeeeee", lw=0.6)
    return to_data_uri(fig)


def shift_scatter_figure(predicted: np.ndarray, observed: np.ndarray, genes: Sequence[str], title: str,
                         n_labels: int = 8) -> str:
    """Per-gene mean shift of a perturbation, observed (x) vs predicted (y); the genes that moved
    most in the data are named."""
    predicted, observed = np.asarray(predicted, float), np.asarray(observed, float)
    fig, ax = plt.subplots(figsize=(5.0, 4.6), layout="constrained")
    ax.axhline(0, color="#bbbbbb", lw=0.8)
    ax.axvline(0, color="#bbbbbb", lw=0.8)
    lo = float(min(predicted.min(), observed.min(), 0.0))
    hi = float(max(predicted.max(), observed.max(), 0.0))
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#888888", lw=1, ls="--", label="y = x")
    ax.scatter(observed, predicted, s=14, color="#3b6ea8", alpha=0.75, linewidths=0)
    for j in np.argsort(-np.abs(observed))[:n_labels]:
        ax.annotate(str(genes[j]), (observed[j], predicted[j]), xytext=(4, 3), textcoords="offset points", fontsize=8,
                    color="#333333").set_in_layout(False)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_title(title)
    ax.set_xlabel("observed shift (slices with that value − slices with this one's)")
    ax.set_ylabel("predicted shift (drawn under it − as measured)")
    ax.grid(True, color="#eeeeee", lw=0.6)
    ax.set_axisbelow(True)
    return to_data_uri(fig)


def uncertainty_figure(
    true: np.ndarray,
    mean_aligned: np.ndarray,
    spread: np.ndarray,
    n_samples: int,
    units: str = "source units",
) -> str:
    """Per-cell positional spread across samples, drawn at the true and at a generated position."""
    n, d = true.shape
    idx = subsample(n)
    t, m, s = true[idx], mean_aligned[idx], spread[idx]
    vmax = float(np.nanpercentile(s, 99)) or None
    projections = [(0, 1)] if d == 2 else list(PROJECTIONS_3D)
    if d == 2:
        ratios = [_ratio([t, m], 0, 1)] * 2
        fig, axes, h = _panel_grid(1, ratios, extra_w=1.3, h_max=4.0, w_avail=9.0)
        cells = [(axes[0, 0], t, "at true position", (0, 1)), (axes[0, 1], m, "at generated position", (0, 1))]
    else:
        ratios = [_ratio([t, m], a, b) for a, b in projections]
        fig, axes, h = _panel_grid(1, ratios, extra_w=1.3, h_max=3.8, w_avail=10.5)
        cells = [(axes[0, c], t, f"at true position: {AXIS_NAMES[a]}{AXIS_NAMES[b]}", (a, b)) for c, (a, b) in enumerate(projections)]
    size = point_size(idx.size, h, float(np.mean(ratios)))
    sc = None
    order = np.argsort(s)
    for ax, pts, title, (a, b) in cells:
        sc = ax.scatter(pts[order, a], pts[order, b], c=s[order], cmap="magma_r", vmin=0, vmax=vmax, s=size,
                        linewidths=0, rasterized=True)
        _set_limits(ax, [t, m], a, b)
        ax.set_title(title)
        ax.set_xlabel(f"{AXIS_NAMES[a]} ({units})")
        ax.set_ylabel(f"{AXIS_NAMES[b]} ({units})")
    fig.colorbar(sc, ax=axes[0, :], shrink=0.9, label=f"RMS spread, {n_samples} samples ({units})")
    return to_data_uri(fig)


def training_curves_figure(curves: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]], x_label: str) -> str:
    """One panel per quantity (e.g. ``loss``, ``loss_position``) with a line per split (train/val)."""
    names = list(curves)
    k = len(names)
    cols = min(k, 3)
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.4 * rows), layout="constrained", squeeze=False)
    split_style = {"train": dict(color="#3b6ea8", lw=1.2), "val": dict(color="#d9622b", lw=1.6, marker="o", ms=3.5),
                   "test": dict(color="#4a9a4a", lw=1.6, marker="s", ms=3.5)}
    for i, name in enumerate(names):
        ax = axes[i // cols, i % cols]
        positive = True
        for split, (x, y) in curves[name].items():
            style = dict(split_style.get(split.split(" ")[0], dict(lw=1.2)))
            if split.endswith("(epoch mean)"):
                style.update(color="#1d3f6e" if split.startswith("train") else style.get("color"), lw=1.8, marker="o", ms=3)
            elif split.endswith("(per step)"):
                style.update(alpha=0.55)
            ax.plot(x, y, label=split, **style)
            positive &= bool(np.all(y > 0))
        ys = np.concatenate([y for _, y in curves[name].values()])
        if positive and ys.size and np.nanmax(ys) / max(np.nanmin(ys), 1e-300) > 30:
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel(x_label)
        ax.set_ylabel(name)
        ax.grid(True, color="#eeeeee", lw=0.6)
        ax.legend(loc="upper right", frameon=False)
    for j in range(k, rows * cols):
        axes[j // cols, j % cols].set_visible(False)
    return to_data_uri(fig)
