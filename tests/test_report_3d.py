"""The report's 3D view (alphastomics.report.view3d, templates/_view3d.html.j2): the point data made
from small synthetic 3D samples, no view for 2D ones, and the viewer itself in headless Chromium
(it draws the tissue, and a drag with the mouse turns it; screenshots go to ``test-output/report/``).
"""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from alphastomics.io import sample_file as sf
from alphastomics.report import inputs, plots, view3d
from alphastomics.report.render import _env

try:  # tests/ is on sys.path under pytest's default import mode
    import browser as _browser
except ImportError:  # tests collected as a package
    from tests import browser as _browser

SHOTS = Path(__file__).resolve().parents[1] / "test-output" / "report"
TYPES = ("anterior", "middle", "posterior")
GENES = ("grad_z", "grad_angle", "noise_a", "noise_b", "noise_c")


def _sheet(n: int, rng) -> np.ndarray:
    """Cells on a curved shell (a quarter of a cylinder wall, 4 units thick) 150 units long."""
    theta = rng.uniform(0, np.pi / 2, n)
    radius = 40 + rng.uniform(-2, 2, n)
    return np.c_[radius * np.cos(theta), radius * np.sin(theta), rng.uniform(0, 150, n)]


def _write(path: Path, mode: str, n: int = 300, dims: int = 3, seed: int = 0, frame: str = "shared",
           consensus: bool = True, bad_rows=()) -> Path:
    """A sample file of ``mode`` (expr_to_pos or joint) for a synthetic slice with cell types."""
    rng = np.random.default_rng(seed)
    pos = _sheet(n, rng)
    if dims == 2:
        pos = pos[:, [0, 2]]
    z, angle = pos[:, -1], np.arctan2(pos[:, 1], pos[:, 0]) if dims == 3 else pos[:, 0]
    x = np.c_[z / 150, angle, rng.random((n, 3))].astype(np.float32)
    types = np.array(TYPES)[np.minimum((z / 50).astype(int), 2)]
    adata = ad.AnnData(X=x, obs=pd.DataFrame({sf.SLICE_ID: "slab", sf.CELL_TYPE: pd.Categorical(types)},
                                             index=[f"c{i}" for i in range(n)]),
                       var=pd.DataFrame({sf.MEASURED: True}, index=list(GENES)))
    adata.obsm[sf.SPATIAL] = pos.astype(np.float32)
    generated = pos + rng.normal(scale=3, size=pos.shape)
    generated[list(bad_rows)] = np.nan
    adata.obsm[sf.SPATIAL_PRED] = generated.astype(np.float32)
    if mode == "joint":
        adata.layers[sf.EXPR_PRED] = np.clip(x + rng.normal(scale=0.1, size=x.shape), 0, None).astype(np.float32)
    else:
        adata.layers[sf.EXPR_PRED] = x
        if consensus:
            adata.obsm[sf.SPATIAL_PRED_CONSENSUS] = (pos + rng.normal(scale=1, size=pos.shape)).astype(np.float32)
    adata.uns[sf.INFO] = {"mode": mode, "method": sf.DEFAULT_METHOD, "slice_id": "slab", "n_dims": dims,
                          "generated": ["expression", "position"] if mode == "joint" else ["position"],
                          "coordinate_frame": frame, "seed": 0}
    sf.write_sample(adata, path)
    return path


def _section(paths):
    loaded = [inputs.load_sample(p) for p in paths]
    palette = plots.cell_type_palette(sorted({t for s in loaded if s.cell_types is not None for t in s.cell_types}))
    return view3d.view3d_section(inputs.sample_groups(loaded), palette), loaded, palette


def _array(payload: dict, index: int, dtype) -> np.ndarray:
    return np.frombuffer(base64.b64decode(payload["pool"][index]), dtype=dtype)


def _positions(payload: dict, panel: dict) -> np.ndarray:
    q = _array(payload, panel["pos"], "<u2").reshape(-1, 3).astype(np.float64)
    return np.asarray(panel["lo"]) + q * np.asarray(panel["step"])


# ----------------------------------------------------------------------------------------------
# the point data


def test_a_3d_sample_gives_true_and_generated_cells_compactly(tmp_path):
    paths = [_write(tmp_path / "slab.expr_to_pos.h5ad", "expr_to_pos"), _write(tmp_path / "slab.joint.h5ad", "joint")]
    section, (e2p, joint), palette = _section(paths)
    payload = section["payload"]
    assert [v["title"] for v in section["views"]] == ["slab · expr_to_pos · alphastomics", "slab · joint · alphastomics"]
    by_mode = dict(zip(("expr_to_pos", "joint"), payload["views"]))
    for v in section["views"]:
        assert not v["subsampled"] and v["shown"] == "all 300 cells drawn"
        assert v["has_types"] and [g["name"] for g in v["genes"]] == sorted(GENES, key=GENES.index)
        assert "any of the 5 measured genes" in v["colour_note"]
    spec = by_mode["expr_to_pos"]
    true_panel, gen_panel = spec["panels"]
    steps = np.asarray(true_panel["step"])
    # positions: uint16 steps of the bounding box, within half a step of the truth
    assert np.all(np.abs(_positions(payload, true_panel) - e2p.true_pos) <= steps / 2 + 1e-6)
    # expr_to_pos draws the consensus layout (as it is: a shared frame), not the draw
    consensus = np.asarray(e2p.adata.obsm[sf.SPATIAL_PRED_CONSENSUS], np.float64)
    assert np.abs(_positions(payload, gen_panel) - consensus).max() <= np.max(gen_panel["step"])
    assert "consensus layout" in section["views"][0]["placement"]
    # cell types: codes into the view's names, coloured as in the report's other figures
    assert spec["types"] == sorted(TYPES) and spec["colours"] == [palette[t] for t in sorted(TYPES)]
    codes = _array(payload, true_panel["types"], "<u2")
    assert list(np.asarray(spec["types"])[codes]) == list(e2p.cell_types)
    assert spec["colour"] == view3d.TYPE_KEY
    # genes: uint8 steps between each gene's 1st and 99th percentile of the true values, gene-major
    genes = _array(payload, true_panel["genes"], np.uint8).reshape(len(GENES), -1)
    lo, hi = np.asarray(spec["ranges"]).T
    x = np.asarray(e2p.adata.X, np.float64)
    expected = np.rint(np.clip((x - lo) / (hi - lo), 0, 1) * 255).T
    assert np.array_equal(genes, expected)
    # every array stored once: expr_to_pos's generated cells carry the given (true) expression and
    # types; joint shares the true slice, and has its own generated expression
    assert gen_panel["genes"] == true_panel["genes"] and gen_panel["types"] == true_panel["types"]
    joint_true, joint_gen = by_mode["joint"]["panels"]
    assert joint_true["pos"] == true_panel["pos"] and joint_true["genes"] == true_panel["genes"]
    assert joint_gen["genes"] != true_panel["genes"]
    assert len(payload["pool"]) == len(set(payload["pool"]))
    # joint: its draw centred on the true slice, unaligned
    shifted = joint.pred_pos - joint.pred_pos.mean(0) + joint.true_pos.mean(0)
    assert np.abs(_positions(payload, joint_gen) - shifted).max() <= np.max(joint_gen["step"])
    # start: the widest axis across, the narrowest in depth
    assert spec["axes"][0] == 2 and spec["axes"][2] != 2


def test_large_slices_are_subsampled_with_a_seed_and_the_caption_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(view3d, "MAX_POINTS", 120)
    monkeypatch.setattr(view3d, "GENE_VALUE_BUDGET", 120 * 2)  # room for two genes of five
    idx = plots.subsample(300, 120, view3d.SEED)
    paths = [_write(tmp_path / "slab.expr_to_pos.h5ad", "expr_to_pos", frame="per_slice", consensus=False, bad_rows=idx[[0, 5, 9]])]
    first, (sample,), _ = _section(paths)
    again, _, _ = _section(paths)
    assert first["payload"] == again["payload"]  # seeded: the same cells every time
    (v,) = first["views"]
    assert v["subsampled"] and v["shown"].startswith("120 of 300 cells drawn per panel (a random subsample, seed 0)")
    true_panel, gen_panel = v["data"]["panels"]
    assert true_panel["n"] == 120 and np.all(np.abs(_positions(first["payload"], true_panel) - sample.true_pos[idx])
                                             <= np.asarray(true_panel["step"]) / 2 + 1e-6)
    # cells with non-finite generated coordinates are left out, and said to be
    assert gen_panel["n"] == 117 and gen_panel["dropped"] == 3
    assert "3 generated cell(s) with non-finite coordinates left out" in v["shown"]
    # over the budget: the most spatially variable genes only (the two gradients, not the noise)
    assert [g["name"] for g in v["genes"]] == ["grad_z", "grad_angle"]
    assert "the 2 most spatially variable of the 5 measured genes" in v["colour_note"]
    # a per-slice frame without a consensus: the draw, rigidly aligned
    assert v["placement"].startswith(f"obsm['{sf.SPATIAL_PRED}'], rotated or reflected")


def test_2d_and_flat_slices_get_no_3d_view(tmp_path):
    flat = np.c_[np.random.default_rng(0).random((50, 2)), np.zeros(50)]
    assert view3d.is_3d(_sheet(50, np.random.default_rng(0))) and not view3d.is_3d(flat)
    assert not view3d.is_3d(flat[:, :2])
    paths = [_write(tmp_path / "slab.expr_to_pos.h5ad", "expr_to_pos", dims=2), _write(tmp_path / "slab.joint.h5ad", "joint", dims=2)]
    section, _, _ = _section(paths)
    assert section["views"] == [] and section["payload"] == {"pool": [], "views": []}
    html = _env().get_template("_view3d.html.j2").render(view3d=section)
    assert html.strip() == ""


# ----------------------------------------------------------------------------------------------
# the viewer in a browser


PAGE = ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>3D view</title><style>{% include "_style.css.j2" %}'
        '{% include "_view3d.css.j2" %}</style></head><body><main class="wrap">{% include "_view3d.html.j2" %}</main></body></html>')


@pytest.fixture(scope="module")
def chromium():
    try:
        binary = _browser.find_chromium()
    except _browser.BrowserUnavailable as err:
        pytest.skip(f"headless browser test needs chromium: {err}")
    with _browser.Browser(binary) as b:
        yield b


def _canvas_pixels(page, index: int) -> np.ndarray:
    """The pixels of the ``index``-th canvas of the page as it is shown, (h, w, 3)."""
    from PIL import Image  # pillow comes with matplotlib

    box = page.evaluate(f"(() => {{ const r = document.querySelectorAll('canvas')[{index}].getBoundingClientRect();"
                        " return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]; })()")
    clip = dict(zip(("x", "y", "width", "height"), box), scale=1)
    data = page.call("Page.captureScreenshot", format="png", clip=clip)["data"]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"), dtype=np.int16)


def _drawn(page) -> None:
    """Wait until the viewer has drawn what it scheduled (two animation frames)."""
    page.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def _hues(pixels: np.ndarray) -> np.ndarray:
    """Hue (0-1) of each pixel, NaN where it is grey or white (saturation below 0.25)."""
    from matplotlib.colors import rgb_to_hsv

    hsv = rgb_to_hsv(np.clip(pixels, 0, 255) / 255.0)
    return np.where(hsv[..., 1] > 0.25, hsv[..., 0], np.nan)


def _changed(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a - b).sum(2) > 30).mean())


def test_the_viewer_draws_the_tissue_and_turns_when_dragged(chromium, tmp_path):
    paths = [_write(tmp_path / "slab.expr_to_pos.h5ad", "expr_to_pos", n=600), _write(tmp_path / "slab.joint.h5ad", "joint", n=600)]
    section, _, palette = _section(paths)
    html = _env().from_string(PAGE).render(view3d=section)
    assert not re.search(r'<script[^>]*\bsrc=|<link[^>]*\bhref=|(src|href)="(https?:)?//', html)  # nothing from outside
    out = tmp_path / "view3d.html"
    out.write_text(html)
    page = chromium.open(out, settle_s=0.5)
    assert page.console_errors == []
    assert page.evaluate("Object.keys(AlphaSTomicsView3D.views)") == ["view3d-0", "view3d-1"]
    _drawn(page)
    before = _canvas_pixels(page, 0)
    # not blank: the tissue covers part of the canvas, in the colours of its cell types
    assert (before.sum(2) < 3 * 235).mean() > 0.02
    hue = _hues(before)
    for t in TYPES:  # farther cells fade towards white, which keeps their hue
        colour = np.array([[[int(palette[t][i:i + 2], 16) for i in (1, 3, 5)]]])
        assert (np.abs(hue - _hues(colour)[0, 0]) < 0.02).sum() > 50, f"no cell drawn in {t}'s colour"
    # nothing changes without input: the comparison below is not vacuous
    _drawn(page)
    assert _changed(before, _canvas_pixels(page, 0)) == 0
    # drag across the true panel with the mouse: both panels turn
    other_before = _canvas_pixels(page, 1)
    box = page.evaluate("(() => { const r = document.querySelectorAll('canvas')[0].getBoundingClientRect();"
                        " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
    x, y = box
    page.call("Input.dispatchMouseEvent", type="mousePressed", x=x, y=y, button="left", buttons=1, clickCount=1)
    for k in range(1, 11):
        page.call("Input.dispatchMouseEvent", type="mouseMoved", x=x + 12 * k, y=y + 5 * k, button="left", buttons=1)
    page.call("Input.dispatchMouseEvent", type="mouseReleased", x=x + 120, y=y + 50, button="left", buttons=0, clickCount=1)
    _drawn(page)
    turned = _canvas_pixels(page, 0)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(SHOTS / "view3d.png", full_page=True)
    assert _changed(before, turned) > 0.01, "the picture did not change when dragged"
    assert _changed(other_before, _canvas_pixels(page, 1)) > 0.01, "the generated panel did not turn with the true one"
    assert (turned.sum(2) < 3 * 235).mean() > 0.02
    state = page.evaluate("AlphaSTomicsView3D.views['view3d-0'].state()")
    assert state["rotation"] != page.evaluate("AlphaSTomicsView3D.views['view3d-1'].state()")["rotation"]  # views turn apart
    # the wheel zooms in: the tissue covers more of the canvas
    page.call("Input.dispatchMouseEvent", type="mouseWheel", x=x, y=y, deltaX=0, deltaY=-400)
    _drawn(page)
    zoomed = _canvas_pixels(page, 0)
    assert page.evaluate("AlphaSTomicsView3D.views['view3d-0'].state().zoom") > 1.5
    assert (zoomed.sum(2) < 3 * 235).mean() > (turned.sum(2) < 3 * 235).mean()
    # colour by a gene from the list: the same cells, other colours, a colour bar in the legend
    page.evaluate("(() => { const s = document.querySelector('#view3d-0 select'); s.value = '0';"
                  " s.dispatchEvent(new Event('change')); })()")
    _drawn(page)
    assert _changed(zoomed, _canvas_pixels(page, 0)) > 0.01
    assert "grad_z" in page.evaluate("document.querySelector('#view3d-0 .v3-legend').textContent")
    assert page.console_errors == []
