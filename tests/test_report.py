"""Tests of ``alphastomics report``: geometry helpers against scipy/scanpy, metric tables, and whole
reports built from realistic inputs (real slices of STARmap mPFC (2D, cell types) and the BDTNP
embryo (3D, no cell types) with noisy 'generated' values) in the layout of docs/FORMATS.md.

The input builders (``build_starmap_run``, ``build_bdtnp_run``) are shared with
``test_report_browser.py``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphastomics import cli
from alphastomics.report import inputs, plots, sections, tables

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "resources"  # the bundled real data
STARMAP_FILES = {
    "20180417_BZ5_control": DATA / "starmap_mpfc" / "starmap_mpfc_20180417_BZ5_control.h5ad",
    "20180419_BZ9_control": DATA / "starmap_mpfc" / "starmap_mpfc_20180419_BZ9_control.h5ad",
    "20180424_BZ14_control": DATA / "starmap_mpfc" / "starmap_mpfc_20180424_BZ14_control.h5ad",
}
BDTNP_SLABS = sorted((DATA / "bdtnp_drosophila").glob("bdtnp_slab*.h5ad"))


def _require(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.fail(f"bundled data missing: {', '.join(missing)}")


# ----------------------------------------------------------------------------------------------
# builders of realistic report inputs


def _rotation(d: int, rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return q


def _generated_positions(true: np.ndarray, noise: float, rng, swap_frac: float = 0.05) -> np.ndarray:
    """A rotated, rescaled, shifted and noisy copy of ``true`` with a few cells swapped."""
    centre = true.mean(0)
    rms = np.sqrt(np.mean(np.sum((true - centre) ** 2, axis=1)))
    pts = (true - centre) @ _rotation(true.shape[1], rng) * 0.9 + centre + 0.05 * rms
    pts += rng.normal(scale=noise * rms, size=pts.shape)
    n_swap = int(swap_frac * len(pts)) // 2 * 2
    idx = rng.choice(len(pts), size=n_swap, replace=False)
    pts[idx] = pts[idx[::-1]]
    return pts.astype(np.float32)


def _generated_expression(true_expr: np.ndarray, coords: np.ndarray, noise: float, rng) -> np.ndarray:
    """Spatially smoothed true expression plus noise: what an imperfect model produces."""
    w = plots.knn_graph(coords, 8)
    deg = np.asarray(w.sum(1)).ravel()
    smooth = (w @ true_expr) / deg[:, None]
    out = 0.6 * smooth + 0.4 * true_expr + rng.normal(scale=noise * true_expr.std(0, keepdims=True) + 1e-6, size=true_expr.shape)
    return np.clip(out, 0, None).astype(np.float32)


def _sample_metrics(adata, dataset, slice_id, mode, method) -> list[dict]:
    """A few real metrics of one sample file (what ``alphastomics evaluate`` writes, thinner)."""
    from scipy.spatial import procrustes
    from scipy.spatial import cKDTree
    from scipy.stats import spearmanr

    rows = []
    t_pos, g_pos = np.asarray(adata.obsm["spatial"], float), np.asarray(adata.obsm["spatial_pred"], float)
    measured = np.asarray(adata.var["measured"], bool)
    x, xp = np.asarray(adata.X)[:, measured], np.asarray(adata.layers["expr_pred"])[:, measured]

    def add(metric, value):
        rows.append(dict(dataset=dataset, slice=slice_id, mode=mode, method=method, metric=metric, value=float(value)))

    if mode in ("pos_to_expr", "joint"):
        add("expr_mse", np.mean((x - xp) ** 2))
        add("expr_mae", np.mean(np.abs(x - xp)))
        pcc = [np.corrcoef(x[:, j], xp[:, j])[0, 1] for j in range(x.shape[1]) if x[:, j].std() > 0 and xp[:, j].std() > 0]
        add("expr_pearson_gene_median", np.median(pcc))
        add("expr_pearson_gene_mean", np.mean(pcc))
        w = plots.knn_graph(t_pos, 10)
        mi_t, mi_g = plots.morans_i(w, x), plots.morans_i(w, xp)
        ok = np.isfinite(mi_t) & np.isfinite(mi_g)
        add("morans_i_corr", np.corrcoef(mi_t[ok], mi_g[ok])[0, 1])
        add("morans_i_abs_diff", np.mean(np.abs(mi_t[ok] - mi_g[ok])))
    if mode in ("expr_to_pos", "joint"):
        add("procrustes_disparity", procrustes(t_pos, g_pos)[2])
        for k in (5, 10):
            _, it = cKDTree(t_pos).query(t_pos, k + 1)
            _, ig = cKDTree(g_pos).query(g_pos, k + 1)
            add(f"knn_preservation_k{k}", np.mean([len(set(a[1:]) & set(b[1:])) / k for a, b in zip(it, ig)]))
        sub = np.random.default_rng(0).choice(len(t_pos), size=min(300, len(t_pos)), replace=False)
        dt = np.linalg.norm(t_pos[sub, None] - t_pos[None, sub], axis=2)
        dg = np.linalg.norm(g_pos[sub, None] - g_pos[None, sub], axis=2)
        rho = [spearmanr(a, b)[0] for a, b in zip(dt, dg)]
        add("distance_spearman_median", np.median(rho))
    return rows


def _write_sample(path: Path, adata_true, expr_true, pred_expr, pred_pos, meta: dict, measured) -> None:
    import anndata as ad

    a = ad.AnnData(X=expr_true.astype(np.float32), obs=adata_true.obs.copy(), var=pd.DataFrame(index=adata_true.var_names.copy()))
    a.layers["expr_pred"] = pred_expr.astype(np.float32)
    a.obsm["spatial"] = np.asarray(adata_true.obsm["spatial"], dtype=np.float32)
    a.obsm["spatial_pred"] = pred_pos.astype(np.float32)
    a.var["measured"] = measured
    a.uns["alphastomics"] = meta
    a.write_h5ad(path)


def _write_training_log(path: Path, rng, epochs: int = 30, steps_per_epoch: int = 8) -> None:
    """A Lightning CSVLogger metrics.csv as ``alphastomics train`` logs it: sparse rows, train losses
    per step (``*_step``) and as epoch means (``*_epoch``), validation loss every 5 epochs."""
    cols = ["epoch", "step", "train/loss_step", "train/loss_expression_step", "train/loss_position_step",
            "train/loss_epoch", "train/loss_expression_epoch", "train/loss_position_epoch", "val/loss"]
    rows = []
    step = 0
    for epoch in range(epochs):
        le_sum = lp_sum = 0.0
        for _ in range(steps_per_epoch):
            decay = np.exp(-step / 80.0)
            le = 0.2 + 1.5 * decay + abs(rng.normal(scale=0.05))
            lp = 0.05 + 3.0 * decay + abs(rng.normal(scale=0.08))
            le_sum, lp_sum = le_sum + le, lp_sum + lp
            if step % 4 == 3:  # log_every_n_steps
                rows.append({"epoch": epoch, "step": step, "train/loss_step": le + lp, "train/loss_expression_step": le,
                             "train/loss_position_step": lp})
            step += 1
        if epoch % 5 == 4:
            decay = np.exp(-step / 80.0)
            rows.append({"epoch": epoch, "step": step - 1, "val/loss": 0.3 + 4.2 * decay + abs(rng.normal(scale=0.05))})
        le_mean, lp_mean = le_sum / steps_per_epoch, lp_sum / steps_per_epoch
        rows.append({"epoch": epoch, "step": step - 1, "train/loss_epoch": le_mean + lp_mean,
                     "train/loss_expression_epoch": le_mean, "train/loss_position_epoch": lp_mean})
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=cols).to_csv(path, index=False)
    (path.parent.parent / "training.json").write_text(json.dumps({
        "package_version": "0.1.0", "best_checkpoint": "checkpoints/best.ckpt", "monitor": "val/loss",
        "global_step": step, "epochs": epochs, "train_slices": ["20180417_BZ5_control"],
        "validation_slices": ["20180419_BZ9_control"], "strategy": "auto"}, indent=2))


def _manifest(dataset, genes, platform, measured, slices: dict, sources) -> dict:
    return {
        "format_version": 1,
        "package_version": "0.1.0",
        "dataset": dataset,
        "genes": list(genes),
        "platforms": {platform: {
            "measured_genes": list(measured),
            "normalization": {"requested": "auto", "applied": "library_size_log1p", "target_sum": 10000.0},
            "position_key": "spatial",
            "sources": sources,
        }},
        "slices": slices,
    }


def build_starmap_run(root: Path) -> dict:
    """results/starmap_mpfc-like inputs: 3 slices, test slice BZ14 sampled in all three modes by two
    methods, the joint mode of alphastomics drawn with three seeds; training log, logs, checkpoint."""
    import anndata as ad

    _require(*STARMAP_FILES.values())
    rng = np.random.default_rng(7)
    dataset = "starmap_mpfc"
    res = root / "results" / dataset
    (res / "samples").mkdir(parents=True, exist_ok=True)
    slices, sources, test = {}, [], "20180424_BZ14_control"
    test_adata = None
    for sid, path in STARMAP_FILES.items():
        a = ad.read_h5ad(path)
        pos = np.asarray(a.obsm["spatial"], float)
        slices[sid] = {"platform": "starmap", "source": f"resources/starmap_mpfc/{path.name}", "n_cells": int(a.n_obs),
                       "n_dims": 2, "bounds": {"min": pos.min(0).tolist() + [0.0], "max": pos.max(0).tolist() + [0.0]},
                       "has_cell_type": True,
                       "shards": [{"path": f"shards/starmap/{sid}-0000.parquet", "n_rows": int(a.n_obs), "sha256": "0" * 64}]}
        sources.append({"path": f"resources/starmap_mpfc/{path.name}", "size": path.stat().st_size, "sha256": "0" * 64,
                        "n_obs": int(a.n_obs), "dropped_invalid_positions": 0, "unmatched_genes": []})
        if sid == test:
            test_adata = a
    genes = list(test_adata.var_names)
    (res / "manifest.json").write_text(json.dumps(_manifest(dataset, genes, "starmap", genes, slices, sources), indent=1))

    counts = np.asarray(test_adata.X, float)
    expr = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4)
    true_pos = np.asarray(test_adata.obsm["spatial"], float)
    obs = test_adata.obs[["slice_id", "cell_type"]].copy()
    obs["platform"] = "starmap"
    test_adata.obs = obs
    ckpt = res / "model" / "model.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(rng.bytes(4096))
    ckpt_sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    measured = np.ones(len(genes), bool)
    metric_rows, samples = [], []
    for method, noise in (("alphastomics", 0.08), ("mean_baseline", 0.25)):
        for mode in ("expr_to_pos", "pos_to_expr", "joint"):
            seeds = (0, 1, 2) if (method == "alphastomics" and mode == "joint") else (0,)
            for seed in seeds:
                r = np.random.default_rng(100 * seed + len(method) + len(mode))
                gen_pos = _generated_positions(true_pos, noise, r) if mode != "pos_to_expr" else true_pos.astype(np.float32)
                gen_expr = _generated_expression(expr, true_pos, 0.5 + 3 * noise, r) if mode != "expr_to_pos" else expr
                generated = {"expr_to_pos": ["position"], "pos_to_expr": ["expression"], "joint": ["expression", "position"]}[mode]
                meta = {"mode": mode, "method": method, "dataset": dataset, "slice_id": test, "n_dims": 2,
                        "generated": generated, "seed": seed, "steps": 200, "checkpoint_sha256": ckpt_sha,
                        "package_version": "0.1.0", "runtime_s": float(12.5 + seed)}
                tag = "" if method == "alphastomics" else f".{method}"
                tag += "" if seed == 0 else f".seed{seed}"
                out = res / "samples" / f"{test}.{mode}{tag}.h5ad"
                _write_sample(out, test_adata, expr, gen_expr, gen_pos, meta, measured)
                samples.append(out)
                if seed == 0:
                    import anndata as ad2

                    metric_rows += _sample_metrics(ad2.read_h5ad(out), dataset, test, mode, method)
    pd.DataFrame(metric_rows, columns=inputs.METRIC_COLUMNS).to_csv(res / "metrics.tsv", sep="\t", index=False)
    _write_training_log(res / "model" / "logs" / "metrics.csv", rng)
    logs = root / "logs"
    for stage, minutes in (("preprocess", 0.3), ("train", 4.2), ("sample", 1.1)):
        p = logs / stage / f"{dataset}.log"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"2025-05-01 10:00:00,000 INFO alphastomics.{stage}: start\n"
                     f"2025-05-01 10:{int(minutes):02d}:{int(minutes % 1 * 60):02d},000 INFO alphastomics.{stage}: done\n")
    (logs / "train" / "other_dataset.log").write_text("2025-05-01 09:00:00,000 INFO other\n")
    return {"dataset": dataset, "res": res, "manifest": res / "manifest.json", "metrics": res / "metrics.tsv",
            "samples": samples, "training_log": res / "model" / "logs" / "metrics.csv", "checkpoint": ckpt, "log_dir": logs,
            "config": REPO / "config" / "config.yaml"}


def build_bdtnp_run(root: Path) -> dict:
    """results/bdtnp_drosophila-like inputs: the 3D embryo cut into 4 slabs along x, slab2 sampled in
    expr_to_pos and pos_to_expr; no cell types, no training log, 4 genes marked unmeasured."""
    import anndata as ad

    _require(*BDTNP_SLABS)
    rng = np.random.default_rng(11)
    dataset = "bdtnp_drosophila"
    res = root / "results" / dataset
    (res / "samples").mkdir(parents=True, exist_ok=True)
    a = ad.concat([ad.read_h5ad(f) for f in BDTNP_SLABS])  # the whole embryo again
    pos = np.asarray(a.obsm["spatial"], float)
    edges = np.quantile(pos[:, 0], [0, 0.25, 0.5, 0.75, 1.0])
    slab = np.clip(np.searchsorted(edges, pos[:, 0], side="right") - 1, 0, 3)
    genes = list(a.var_names)
    measured_names = genes[4:]
    slices = {}
    for k in range(4):
        p = pos[slab == k]
        slices[f"slab{k}"] = {"platform": "insitu", "source": f"resources/bdtnp_drosophila/bdtnp_slab{k}.h5ad",
                              "n_cells": int(p.shape[0]), "n_dims": 3, "bounds": {"min": p.min(0).tolist(), "max": p.max(0).tolist()},
                              "has_cell_type": False,
                              "shards": [{"path": f"shards/insitu/slab{k}-0000.parquet", "n_rows": int(p.shape[0]), "sha256": "0" * 64}]}
    sources = [{"path": s["source"], "size": 1, "sha256": "0" * 64, "n_obs": s["n_cells"], "dropped_invalid_positions": 0,
                "unmatched_genes": []} for s in slices.values()]
    man = _manifest(dataset, genes, "insitu", measured_names, slices, sources)
    man["platforms"]["insitu"]["normalization"] = {"requested": "none", "applied": "none"}
    (res / "manifest.json").write_text(json.dumps(man, indent=1))

    test = a[slab == 2].copy()
    test.obs = pd.DataFrame({"slice_id": "slab2", "platform": "insitu"}, index=test.obs_names)
    expr = np.asarray(test.X, float)
    measured = np.array([g in set(measured_names) for g in genes])
    expr[:, ~measured] = 0.0
    true_pos = np.asarray(test.obsm["spatial"], float)
    metric_rows, samples = [], []
    for mode in ("expr_to_pos", "pos_to_expr"):
        gen_pos = _generated_positions(true_pos, 0.1, rng) if mode == "expr_to_pos" else true_pos.astype(np.float32)
        gen_expr = _generated_expression(expr, true_pos, 0.6, rng) if mode == "pos_to_expr" else expr
        gen_expr[:, ~measured] = 0.0
        meta = {"mode": mode, "method": "alphastomics", "dataset": dataset, "slice_id": "slab2", "n_dims": 3,
                "generated": ["position"] if mode == "expr_to_pos" else ["expression"], "seed": 0, "steps": 50,
                "checkpoint_sha256": "f" * 64, "package_version": "0.1.0", "runtime_s": 3.2}
        out = res / "samples" / f"slab2.{mode}.h5ad"
        _write_sample(out, test, expr, gen_expr, gen_pos, meta, measured)
        samples.append(out)
        metric_rows += _sample_metrics(ad.read_h5ad(out), dataset, "slab2", mode, "alphastomics")
    pd.DataFrame(metric_rows, columns=inputs.METRIC_COLUMNS).to_csv(res / "metrics.tsv", sep="\t", index=False)
    return {"dataset": dataset, "res": res, "manifest": res / "manifest.json", "metrics": res / "metrics.tsv", "samples": samples}


def report_argv(run: dict, out: Path) -> list[str]:
    argv = ["report", "--dataset", run["dataset"], "--manifest", str(run["manifest"]), "--metrics", str(run["metrics"]),
            "--samples", *map(str, run["samples"])]
    for key, flag in (("training_log", "--training-log"), ("config", "--config"), ("checkpoint", "--checkpoint"),
                      ("log_dir", "--log-dir")):
        if run.get(key):
            argv += [flag, str(run[key])]
    return argv + ["--out", str(out)]


_BUILT: dict = {}


def built_reports(tmp_path_factory) -> dict:
    """Both datasets' inputs and rendered reports plus the summary page; made once per test session
    and shared with test_report_browser.py."""
    if _BUILT:
        return _BUILT
    root = tmp_path_factory.mktemp("report_run")
    runs = {"starmap": build_starmap_run(root), "bdtnp": build_bdtnp_run(root)}
    for run in runs.values():
        run["report"] = run["res"] / "report.html"
        assert cli.main(report_argv(run, run["report"])) == 0
    summary = root / "results" / "summary.html"
    assert cli.main(["report", "--summary", "--metrics", str(runs["starmap"]["metrics"]), str(runs["bdtnp"]["metrics"]),
                     "--out", str(summary)]) == 0
    runs["summary"] = summary
    runs["root"] = root
    _BUILT.update(runs)
    return _BUILT


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return built_reports(tmp_path_factory)


# ----------------------------------------------------------------------------------------------
# geometry helpers against the references


@pytest.mark.parametrize("d", [2, 3])
def test_rigid_alignment_undoes_rotation_and_translation_but_never_rescales(d):
    """Issue 9: the report drew generated tissue after a fit *with scaling*, so a tissue of the
    wrong size looked right. The rigid alignment keeps the generated size."""
    from scipy.linalg import orthogonal_procrustes

    rng = np.random.default_rng(d)
    true = rng.normal(size=(200, d)) * [5.0, 2.0, 1.0][:d] + 40
    moved = (true - true.mean(0)) @ _rotation(d, rng) - 3
    back, rmsd = plots.rigid_align(true, moved)
    np.testing.assert_allclose(back, true, atol=1e-8)
    assert rmsd == pytest.approx(0.0, abs=1e-8)
    shrunk, _ = plots.rigid_align(true, moved * 0.4)
    np.testing.assert_allclose(np.ptp(shrunk, axis=0).max() / np.ptp(true, axis=0).max(), 0.4, rtol=1e-6)
    # the same rotation as scipy's orthogonal Procrustes on centred points
    noisy = moved + rng.normal(scale=0.3, size=true.shape)
    expected, _ = orthogonal_procrustes(noisy - noisy.mean(0), true - true.mean(0))
    np.testing.assert_allclose(plots.rigid_align(true, noisy)[0], (noisy - noisy.mean(0)) @ expected + true.mean(0), atol=1e-9)


def test_morans_i_matches_scanpy():
    import scanpy as sc

    rng = np.random.default_rng(0)
    coords = rng.uniform(size=(400, 2))
    x = np.c_[coords[:, 0] * 3 + rng.normal(scale=0.1, size=400), rng.normal(size=400), np.sin(coords[:, 1] * 6)]
    w = plots.knn_graph(coords, 10)
    ours = plots.morans_i(w, x)
    ref = sc.metrics.morans_i(w, x.T)
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    assert ours[0] > 0.5 and abs(ours[1]) < 0.1
    assert np.isnan(plots.morans_i(w, np.ones((400, 1))))[0]


def test_metric_directions_come_from_the_metrics_module_only(monkeypatch):
    """One source for which value is better: alphastomics.metrics. A metric it does not know gets
    no direction and no best mark; the report used to guess one from the name."""
    from alphastomics import metrics

    df = pd.DataFrame([
        ("d", "s1", "joint", "alphastomics", "brand_new_error", 0.5), ("d", "s1", "joint", "peer", "brand_new_error", 0.9),
        ("d", "s1", "joint", "alphastomics", "procrustes_disparity", 0.5), ("d", "s1", "joint", "peer", "procrustes_disparity", 0.9),
    ], columns=inputs.METRIC_COLUMNS)
    rows = {r["metric"]: r for g in tables.metric_tables(df)[0]["groups"] for r in g["rows"]}
    assert rows["procrustes_disparity"]["direction"] == "lower" and rows["procrustes_disparity"]["cells"][0]["best"]
    assert rows["brand_new_error"]["direction"] is None and not any(c["best"] for c in rows["brand_new_error"]["cells"])
    monkeypatch.setitem(metrics.METRIC_DIRECTION, "brand_new_", "higher")
    rows = {r["metric"]: r for g in tables.metric_tables(df)[0]["groups"] for r in g["rows"]}
    assert rows["brand_new_error"]["direction"] == "higher" and rows["brand_new_error"]["cells"][1]["best"]


def test_metric_tables_mark_best_per_direction():
    df = pd.DataFrame([
        ("d", "s1", "joint", "alphastomics", "expr_mse", 0.5), ("d", "s2", "joint", "alphastomics", "expr_mse", 0.7),
        ("d", "s1", "joint", "peer", "expr_mse", 0.9), ("d", "s2", "joint", "peer", "expr_mse", 0.9),
        ("d", "s1", "joint", "alphastomics", "knn_preservation_k10", 0.2), ("d", "s1", "joint", "peer", "knn_preservation_k10", 0.4),
        ("d", "s1", "expr_to_pos", "alphastomics", "knn_preservation_k10", 0.3),
    ], columns=inputs.METRIC_COLUMNS)
    by_mode = {t["mode"]: t for t in tables.metric_tables(df)}
    assert list(by_mode) == ["expr_to_pos", "joint"]
    joint = by_mode["joint"]
    assert joint["methods"] == ["alphastomics", "peer"]
    rows = {r["metric"]: r for g in joint["groups"] for r in g["rows"]}
    assert [c["best"] for c in rows["expr_mse"]["cells"]] == [True, False]  # mean 0.6 < 0.9, lower is better
    assert rows["expr_mse"]["cells"][0]["text"] == "0.600"
    assert [c["best"] for c in rows["knn_preservation_k10"]["cells"]] == [False, True]
    assert "s1: 0.5" in rows["expr_mse"]["cells"][0]["title"]
    single = by_mode["expr_to_pos"]  # one method: nothing to mark
    assert not single["any_best"]


def test_a_joint_slice_is_drawn_beside_the_true_one_on_the_same_spans():
    """2D: true | generated in one row (the issue's "side by side"), each axis spanning the larger
    of the two slices, so a slice twice as wide as tall is not drawn in a half-blank square; 3D: a
    row per slice with three projections."""
    import io

    import matplotlib.image

    rng = np.random.default_rng(0)
    true = rng.uniform([-6000, -3000], [6000, 3000], (500, 2))
    generated = 1.2 * rng.normal(0, 1, (400, 2)) * [3000, 1500]
    types = np.array(["a", "b"])
    palette = {"a": "#1f77b4", "b": "#ff7f0e"}

    def shape(uri):
        return matplotlib.image.imread(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).shape[:2]

    height, width = shape(plots.side_by_side_figure(true, generated, types[rng.integers(0, 2, 500)],
                                                    types[rng.integers(0, 2, 400)], palette, "cell type"))
    assert width > 2.5 * height, (height, width)
    true3 = np.c_[true, rng.uniform(-2000, 2000, 500)]
    generated3 = np.c_[generated, rng.normal(0, 1500, 400)]
    height3, width3 = shape(plots.side_by_side_figure(true3, generated3, true3[:, 0], generated3[:, 0], None, "x"))
    assert height3 > 1.6 * height, (height, height3)  # a row per slice


def test_training_section_reads_sparse_lightning_log(tmp_path):
    log = tmp_path / "logs" / "metrics.csv"
    _write_training_log(log, np.random.default_rng(0), epochs=10)
    sec = sections.training_section(tmp_path / "logs")  # a folder is searched for metrics.csv
    assert sec["img"].startswith("data:image/png;base64,")
    cols = {r["column"] for r in sec["final"]}
    assert {"train/loss_step", "train/loss_epoch", "train/loss_expression_epoch", "val/loss"} <= cols
    assert {"key": "monitor", "value": "val/loss"} in sec["summary"]  # training.json beside logs/
    nested = tmp_path / "model" / "logs" / "version_0" / "metrics.csv"
    _write_training_log(nested, np.random.default_rng(1), epochs=6)
    sec = sections.training_section(tmp_path / "model" / "logs" / "metrics.csv")  # Lightning added version_0/
    assert sec["path"] == str(nested) and sec["img"]
    missing = sections.training_section(tmp_path / "nope" / "metrics.csv")
    assert missing["img"] is None and "not found" in missing["note"]


# ----------------------------------------------------------------------------------------------
# whole reports


def _images(html: str) -> list[bytes]:
    """Decoded PNGs of every <img>; each must hold a drawing (not a blank canvas)."""
    import io

    from PIL import Image  # pillow comes with matplotlib

    out = []
    for uri in re.findall(r'<img[^>]*src="([^"]+)"', html):
        assert uri.startswith("data:image/png;base64,"), uri[:60]
        data = base64.b64decode(uri.split(",", 1)[1], validate=True)
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=float)
        assert min(pixels.shape) >= 200, f"figure only {pixels.shape} pixels"
        assert (pixels < 200).mean() > 0.01, "a figure is (almost) blank"
        out.append(data)
    return out


def _assert_self_contained(html: str) -> None:
    assert not re.search(r'<script[^>]*\bsrc=', html)
    assert not re.search(r'<link[^>]*\bhref=', html)
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "@import" not in html and "url(http" not in html


def test_starmap_report_has_every_section(built):
    run = built["starmap"]
    html = run["report"].read_text()
    _assert_self_contained(html)
    for anchor in ("summary", "training", "metrics", "tissue", "genes", "moran", "gene-accuracy", "uncertainty", "provenance"):
        assert f'id="{anchor}"' in html
    images = _images(html)
    # training + 4 tissue (2 methods x 2 position modes) + 2x2x2 gene maps + 2 Moran's I modes
    # + gene by gene (pos_to_expr) + 1 uncertainty
    assert len(images) == 1 + 4 + 8 + 2 + 1 + 1
    assert all(img.startswith(b"\x89PNG\r\n\x1a\n") for img in images)
    # metric tables: one per mode, both methods side by side, best marked, direction stated
    for mode in ("expr_to_pos", "pos_to_expr", "joint"):
        assert f"<h3>{mode} <span" in html
    assert html.count('class="num best"') >= 6
    assert "↑ higher" in html and "↓ lower" in html
    assert "mean_baseline" in html
    # dataset summary from the manifest
    assert "20180417_BZ5_control" in html and "166 / 166" in html
    # provenance: checkpoint hash computed, package version, config, run times from this dataset's logs only
    sha = hashlib.sha256(run["checkpoint"].read_bytes()).hexdigest()
    assert sha in html and "different checkpoint" not in html
    assert "4 min 12 s" in html and "other_dataset.log" not in html
    assert "training_mode" in html  # config text embedded
    assert "seeds 0, 1, 2" in html
    # written atomically: no temp files left
    assert [p.name for p in run["res"].glob(".report.html.*")] == []


def test_bdtnp_3d_report_without_cell_types_or_training_log(built):
    run = built["bdtnp"]
    html = run["report"].read_text()
    _assert_self_contained(html)
    assert "No training log was given" in html
    assert "no cell types" in html and "xy, xz and yz projections" in html
    assert "no positional uncertainty to show" in html  # uncertainty section skipped with a note
    assert "80 / 84" in html  # measured genes from the manifest
    assert len(_images(html)) == 1 + 2 + 1 + 1  # tissue, gene maps (most + least), Moran's I, gene by gene
    assert "aay" not in re.sub(r"<[^>]+>", " ", html).split()  # an unmeasured gene is never mapped


def test_summary_page(built):
    html = built["summary"].read_text()
    _assert_self_contained(html)
    assert "starmap_mpfc" in html and "bdtnp_drosophila" in html
    assert 'href="starmap_mpfc/report.html"' in html
    assert "distance Spearman" in html and "Procrustes disparity" in html
    assert 'class="num best"' in html


def test_report_with_only_required_inputs(tmp_path, built):
    run = built["starmap"]
    out = tmp_path / "minimal.html"
    assert cli.main(["report", "--manifest", str(run["manifest"]), "--metrics", str(run["metrics"]), "--out", str(out)]) == 0
    html = out.read_text()
    assert "No sample file with generated coordinates" in html and "No training log was given" in html
    assert "starmap_mpfc" in html  # dataset name taken from the manifest


def test_missing_inputs_fail_with_the_file_named(tmp_path, built, capsys):
    run = built["starmap"]
    out = tmp_path / "r.html"
    assert cli.main(["report", "--manifest", str(tmp_path / "nope.json"), "--metrics", str(run["metrics"]), "--out", str(out)]) == 1
    assert "nope.json" in capsys.readouterr().err
    assert cli.main(["report", "--manifest", str(run["manifest"]), "--metrics", str(tmp_path / "m.tsv"), "--out", str(out)]) == 1
    assert "m.tsv" in capsys.readouterr().err
    assert cli.main(["report", "--manifest", str(run["manifest"]), "--metrics", str(run["metrics"]),
                     "--samples", str(tmp_path / "x.joint.h5ad"), "--out", str(out)]) == 1
    assert "x.joint.h5ad" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.glob(".r.html.*")) == []


def test_rigid_alignment_ignores_non_finite_rows():
    rng = np.random.default_rng(3)
    true = rng.normal(size=(100, 2))
    pred = true @ _rotation(2, rng) + 1.0
    pred[:5] = np.nan
    aligned, rmsd = plots.rigid_align(true, pred)
    np.testing.assert_allclose(aligned[5:], true[5:], atol=1e-8)
    assert np.isnan(aligned[:5]).all() and rmsd == pytest.approx(0.0, abs=1e-8)


def test_report_survives_partial_cell_types_and_diverged_cells(tmp_path, built):
    """Some cells without a cell type and a few NaN generated coordinates: the report still renders."""
    import anndata as ad

    run = built["starmap"]
    src = next(p for p in run["samples"] if p.name.endswith(".expr_to_pos.h5ad"))
    a = ad.read_h5ad(src)
    ct = a.obs["cell_type"].astype(object)
    ct.iloc[:100] = None
    a.obs["cell_type"] = ct
    a.obsm["spatial_pred"][:7] = np.nan
    broken = tmp_path / src.name
    a.write_h5ad(broken)
    out = tmp_path / "r.html"
    assert cli.main(["report", "--manifest", str(run["manifest"]), "--metrics", str(run["metrics"]),
                     "--samples", str(broken), "--out", str(out)]) == 0
    html = out.read_text()
    assert len(_images(html)) == 1  # the tissue plot, with the 7 diverged cells left out
    assert "RMS displacement" in html


# ----------------------------------------------------------------------------------------------
# peers (issue 12): every method of the run in the tables, failures shown, ranks, targets


def _peer_frames():
    rows = []
    for method, knn, spearman in [("alphastomics", 0.30, 0.50), ("celery", 0.20, 0.60), ("random", 0.02, 0.0)]:
        rows += [("d", "s1", "expr_to_pos", method, "knn_preservation_k10", knn),
                 ("d", "s1", "expr_to_pos", method, "distance_spearman_median", spearman)]
    rows += [("d", "s1", "impute", m, "expr_mean_spearman_gene_median", v) for m, v in [("alphastomics", 0.4), ("knn", 0.3)]]
    metrics = pd.DataFrame(rows, columns=["dataset", "slice", "mode", "method", "metric", "value"])
    runs = pd.DataFrame([
        ("d", "s1", "expr_to_pos", "alphastomics", "ok", "", 12.0, 800.0),
        ("d", "s1", "expr_to_pos", "celery", "ok", "", 5.0, 500.0),
        ("d", "s1", "expr_to_pos", "novosparc", "failed", "too slow: stopped at the time limit of 300 s", 300.0, 900.0),
        ("d", "s1", "impute", "tangram", "failed", "not installed: tangram-sc", 1.0, 100.0),
        ("d", "", "train", "alphastomics", "ok", "", 400.0, 1200.0),
    ], columns=["dataset", "slice", "mode", "method", "status", "reason", "wall_s", "max_rss_mb"])
    return metrics, runs


def test_metric_tables_list_failed_methods_with_their_reason_and_run_costs():
    metrics, runs = _peer_frames()
    by_mode = {t["mode"]: t for t in tables.metric_tables(metrics, runs)}
    table = by_mode["expr_to_pos"]
    assert table["methods"] == ["alphastomics", "celery", "novosparc", "random"]  # lower bound last
    knn_row = next(r for g in table["groups"] for r in g["rows"] if r["metric"] == "knn_preservation_k10")
    novosparc = knn_row["cells"][table["methods"].index("novosparc")]
    assert novosparc["text"] == "failed" and "time limit" in novosparc["title"]
    run_group = next(g for g in table["groups"] if g["category"].startswith("Run"))
    status = next(r for r in run_group["rows"] if r["metric"] == "status")
    assert status["cells"][2]["text"].startswith("failed: s1: too slow")
    assert "tangram" in by_mode["impute"]["methods"]


def test_summary_ranks_every_method_and_shows_time_memory_and_failures():
    metrics, runs = _peer_frames()
    cols = tables.headline_columns(metrics)
    rows = tables.summary_rows(metrics, cols, runs)
    knn_col = [metric for _, metric in cols].index("knn_preservation_k10")
    mine = next(r for r in rows if r["mode"] == "expr_to_pos" and r["method"] == "alphastomics")
    assert mine["cells"][knn_col]["rank"] == "#1/3" and mine["training_wall"] == "400" and mine["training_memory"] == "1,200"
    celery = next(r for r in rows if r["mode"] == "expr_to_pos" and r["method"] == "celery")
    assert celery["cells"][knn_col]["rank"] == "#2/3" and celery["wall"] == "5.00" and celery["memory"] == "500"
    failed = next(r for r in rows if r["method"] == "novosparc")
    assert not failed["ok"] and "time limit" in failed["reason"]
    assert any(r["method"] == "tangram" and r["mode"] == "impute" and not r["ok"] for r in rows)


def test_targets_say_plainly_where_alphastomics_is_not_ahead():
    metrics, _ = _peer_frames()
    targets = {(t["mode"], t["metric"]): t for t in tables.target_rows(metrics)}
    assert targets[("expr_to_pos", "knn_preservation_k10")]["met"] is True
    spearman = targets[("expr_to_pos", "distance_spearman_median")]
    assert spearman["met"] is False and spearman["verdict"] == "NOT ahead: behind or level with celery"
    assert targets[("impute", "expr_mean_spearman_gene_median")]["met"] is True  # tangram failed: judged on knn
    text = tables.targets_text(tables.target_rows(metrics))
    assert "NOT ahead" in text and text.strip().endswith("2 of 3 targets met")


def test_pos_to_expr_is_a_target_against_its_peers():
    """pos_to_expr has a peer (kNN in a shared frame), so the targets judge it: AlphaSTomics' posterior
    mean against the kNN row; without a rival, or with lower bounds alone (per-slice frames), it is not measured."""
    columns = ["dataset", "slice", "mode", "method", "metric", "value"]
    metrics = pd.DataFrame([("d", "s1", "pos_to_expr", "alphastomics", "expr_mean_pearson_gene_median", 0.62),
                            ("d", "s1", "pos_to_expr", "knn", "expr_mean_pearson_gene_median", 0.78),
                            ("d", "s2", "pos_to_expr", "alphastomics", "expr_mean_pearson_gene_median", 0.5),
                            ("d", "s3", "pos_to_expr", "alphastomics", "expr_mean_pearson_gene_median", 0.04),
                            ("d", "s3", "pos_to_expr", "training_mean", "expr_mean_pearson_gene_median", 0.0)], columns=columns)
    targets = {(t["slice"], t["mode"]): t for t in tables.target_rows(metrics)}
    behind = targets[("s1", "pos_to_expr")]
    assert behind["met"] is False and "knn" in behind["verdict"]
    assert targets[("s2", "pos_to_expr")]["met"] is None
    bounds_only = targets[("s3", "pos_to_expr")]  # a per-slice frame: only the training mean ran
    assert bounds_only["met"] is None and "lower bounds" in bounds_only["verdict"]


def test_the_oracle_is_a_reference_row_never_ranked_nor_a_rival():
    """An oracle that sees the held-out slice's coordinates sits with the reference rows: it is not
    ranked, not starred, and AlphaSTomics is not judged against it."""
    metrics, runs = _peer_frames()
    oracle = pd.DataFrame([("d", "s1", "expr_to_pos", "oracle", "knn_preservation_k10", 0.9),
                           ("d", "s1", "expr_to_pos", "oracle", "distance_spearman_median", 0.1)], columns=metrics.columns)
    metrics = pd.concat([metrics, oracle], ignore_index=True)
    table = next(t for t in tables.metric_tables(metrics, runs) if t["mode"] == "expr_to_pos")
    assert table["methods"][-1] == "oracle"
    knn_row = next(r for g in table["groups"] for r in g["rows"] if r["metric"] == "knn_preservation_k10")
    assert not knn_row["cells"][-1]["best"] and knn_row["cells"][0]["best"]
    targets = {(t["mode"], t["metric"]): t for t in tables.target_rows(metrics)}
    assert targets[("expr_to_pos", "knn_preservation_k10")]["met"] is True
    rows = tables.summary_rows(metrics, tables.headline_columns(metrics), runs)
    mine = next(r for r in rows if r["mode"] == "expr_to_pos" and r["method"] == "alphastomics")
    knn_col = [metric for _, metric in tables.headline_columns(metrics)].index("knn_preservation_k10")
    assert mine["cells"][knn_col]["rank"] == "#1/3"


def test_expr_to_pos_is_judged_on_the_consensus_layout_where_the_sample_has_one():
    """Against the peers' point estimates, AlphaSTomics' expr_to_pos counts with its consensus layout
    (its point estimate) in the targets and the summary; the peers and the other modes are untouched."""
    metrics, runs = _peer_frames()
    consensus = pd.DataFrame([("d", "s1", "expr_to_pos", "alphastomics", "consensus_distance_spearman_median", 0.65),
                              ("d", "s1", "expr_to_pos", "alphastomics", "consensus_knn_preservation_k10", 0.10)],
                             columns=metrics.columns)
    both = pd.concat([metrics, consensus], ignore_index=True)
    targets = {(t["mode"], t["metric"]): t for t in tables.target_rows(both)}
    spearman, knn = targets[("expr_to_pos", "distance_spearman_median")], targets[("expr_to_pos", "knn_preservation_k10")]
    assert spearman["met"] is True and spearman["alphastomics"] == "0.650" and spearman["best_value"] == "0.600"
    assert knn["met"] is False and knn["verdict"] == "NOT ahead: behind or level with celery"  # 0.10 against 0.20
    assert "alphastomics (consensus_distance_spearman_median) 0.650" in tables.targets_text(tables.target_rows(both))
    assert targets[("impute", "expr_mean_spearman_gene_median")]["alphastomics_metric"] == "expr_mean_spearman_gene_median"

    cols = tables.headline_columns(both)
    assert [metric for _, metric in cols][:2] == ["distance_spearman_median", "knn_preservation_k10"]
    rows = {r["method"]: r for r in tables.summary_rows(both, cols, runs) if r["mode"] == "expr_to_pos"}
    mine, celery = rows["alphastomics"]["cells"][0], rows["celery"]["cells"][0]
    assert (mine["text"], mine["metric"], mine["rank"]) == ("0.650", "consensus_distance_spearman_median", "#1/3")
    assert (celery["text"], celery["metric"], celery["rank"]) == ("0.600", "distance_spearman_median", "#2/3")
    # without a consensus row (older sample files, peers): the draw's figure, as before
    plain = {r["method"]: r for r in tables.summary_rows(metrics, tables.headline_columns(metrics), runs) if r["mode"] == "expr_to_pos"}
    assert plain["alphastomics"]["cells"][0]["text"] == "0.500"


def test_summary_page_shows_ranks_failures_and_targets(tmp_path):
    metrics, runs = _peer_frames()
    metrics.to_csv(tmp_path / "metrics.tsv", sep="\t", index=False)
    runs.to_csv(tmp_path / "methods.tsv", sep="\t", index=False)
    out, targets = tmp_path / "summary.html", tmp_path / "targets.txt"
    assert cli.main(["report", "--summary", "--metrics", str(tmp_path / "metrics.tsv"), "--runs", str(tmp_path / "methods.tsv"),
                     "--targets", str(targets), "--out", str(out)]) == 0
    html = out.read_text()
    assert "#1/3" in html and "too slow: stopped at the time limit of 300 s" in html and "NOT ahead" in html
    assert "not installed: tangram-sc" in html and "2 of 3 targets met" in targets.read_text()


@pytest.mark.parametrize("frame", ["per_slice", "shared"])
def test_the_consensus_layout_is_drawn_beside_the_draw_rigidly_aligned_only_in_a_per_slice_frame(tmp_path, frame):
    """A consensus that is the true slice turned and moved: in a per-slice frame it is drawn aligned
    (RMSD 0); in a shared frame it is drawn where it is (RMSD the displacement)."""
    import anndata as ad

    rng = np.random.default_rng(0)
    true = rng.uniform(0, 100, size=(120, 2))
    angle = np.deg2rad(35)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    consensus = true @ rotation + [40.0, -10.0] if frame == "per_slice" else true + [30.0, 40.0]
    a = ad.AnnData(X=rng.random((120, 3)).astype(np.float32), obs=pd.DataFrame({"cell_type": rng.choice(["A", "B"], 120)}))
    a.obsm["spatial"] = true.astype(np.float32)
    a.obsm["spatial_pred"] = (true + rng.normal(size=true.shape) * 5).astype(np.float32)
    a.obsm["spatial_pred_consensus"] = consensus.astype(np.float32)
    a.uns["alphastomics"] = {"mode": "expr_to_pos", "method": "alphastomics", "slice_id": "s1", "generated": ["position"],
                             "coordinate_frame": frame, "n_dims": 2}
    a.write_h5ad(tmp_path / "s1.expr_to_pos.h5ad")
    sample = inputs.load_sample(tmp_path / "s1.expr_to_pos.h5ad")
    items = sections.tissue_section({("s1", "expr_to_pos", "alphastomics"): [sample]}, {"A": "#f00", "B": "#00f"})
    assert [item["title"].endswith("consensus layout of the draws") for item in items] == [False, True]
    consensus_item = items[1]
    if frame == "per_slice":
        assert float(consensus_item["rmsd"]) == pytest.approx(0.0, abs=1e-3)
        assert "rotation or reflection" in consensus_item["how"]
    else:
        assert float(consensus_item["rmsd"]) == pytest.approx(50.0, rel=1e-4)
        assert "no alignment" in consensus_item["how"]


def test_every_method_s_layout_is_drawn_beside_alphastomics_matched_by_cell_id(tmp_path, monkeypatch):
    """The peers' expr_to_pos layouts come from their status records: a run that failed is left out,
    a peer that stored its cells in another order is matched back by cell id and rigidly aligned
    (per-slice frame), and a peer whose cells are not the slice's is left out."""
    import json

    import anndata as ad

    rng = np.random.default_rng(1)
    n = 80
    true = rng.uniform(0, 100, size=(n, 2))
    cells = [f"c{i}" for i in range(n)]
    types = rng.choice(["A", "B"], n)

    def write(path, coords, order, method):
        a = ad.AnnData(X=rng.random((n, 3)).astype(np.float32), obs=pd.DataFrame({"cell_type": types[order]}, index=np.array(cells)[order]))
        a.obsm["spatial"] = true[order].astype(np.float32)
        a.obsm["spatial_pred"] = coords[order].astype(np.float32)
        a.uns["alphastomics"] = {"mode": "expr_to_pos", "method": method, "slice_id": "s1", "generated": ["position"],
                                 "coordinate_frame": "per_slice", "n_dims": 2}
        a.write_h5ad(path)
        return path

    main = inputs.load_sample(write(tmp_path / "s1.expr_to_pos.h5ad", true + rng.normal(size=true.shape), np.arange(n), "alphastomics"))
    angle = np.deg2rad(70)
    turned = true @ np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) + [5.0, 9.0]
    statuses = []
    for method, status, order in (("celery", "ok", rng.permutation(n)), ("novosparc", "failed", None), ("other", "ok", np.arange(n))):
        folder = tmp_path / "peers" / method
        folder.mkdir(parents=True)
        if order is not None:
            write(folder / "s1.expr_to_pos.h5ad", turned, order, method)
        if method == "other":  # not the slice's cells
            a = ad.read_h5ad(folder / "s1.expr_to_pos.h5ad")
            a.obs_names = [f"x{i}" for i in range(n)]
            a.write_h5ad(folder / "s1.expr_to_pos.h5ad")
        record = folder / "s1.expr_to_pos.status.json"
        record.write_text(json.dumps({"mode": "expr_to_pos", "method": method, "status": status, "sample": "not/here.h5ad"}))
        statuses.append(record)
    peers = inputs.peer_samples(statuses)
    assert sorted(p.method for p in peers) == ["celery", "other"]  # the failed run has no sample

    drawn = {}
    monkeypatch.setattr(sections.plots, "layouts_figure", lambda t, layouts, *a, **k: drawn.update(layouts) or "img")
    items = sections.layout_comparison_section({("s1", "expr_to_pos", "alphastomics"): [main]}, peers, {"A": "#f00", "B": "#00f"})
    assert len(items) == 1 and list(drawn) == ["alphastomics (draw)", "celery"]
    np.testing.assert_allclose(drawn["celery"], true, atol=1e-3)  # matched back by id, turned back, never rescaled


def test_gene_by_gene_names_the_genes_where_alphastomics_is_furthest_behind_the_best_peer(tmp_path):
    """pos_to_expr: AlphaSTomics' posterior mean is scored gene by gene beside each peer's estimate,
    matched by cell id; the rival is the peer with the best median (never a reference row), and the
    genes named first are those furthest behind it."""
    import json

    import anndata as ad

    rng = np.random.default_rng(3)
    n, genes = 120, [f"g{i}" for i in range(6)]
    true = rng.normal(size=(n, len(genes))).astype(np.float32)
    cells = np.array([f"c{i}" for i in range(n)])

    def write(path, estimate, order, method):
        a = ad.AnnData(X=true[order], obs=pd.DataFrame(index=cells[order]), var=pd.DataFrame(index=genes))
        a.obsm["spatial"] = a.obsm["spatial_pred"] = rng.uniform(0, 10, (n, 2)).astype(np.float32)[order]
        a.layers["expr_pred"] = estimate[order] + rng.normal(size=estimate.shape).astype(np.float32)  # a draw: noisier
        if method == "alphastomics":
            a.layers["expr_pred_mean"] = estimate[order]
        a.uns["alphastomics"] = {"mode": "pos_to_expr", "method": method, "slice_id": "s1", "generated": ["expression"]}
        a.write_h5ad(path)
        return path

    ours = true + 0.3 * rng.normal(size=true.shape).astype(np.float32)
    ours[:, 4] = rng.normal(size=n)  # a gene AlphaSTomics misses entirely
    ours[:, 2] = true[:, 2] + 1.5 * rng.normal(size=n)  # and one it gets roughly
    main = inputs.load_sample(write(tmp_path / "s1.pos_to_expr.h5ad", ours.astype(np.float32), np.arange(n), "alphastomics"))
    statuses = []
    for method, estimate in (("knn", true + 0.5 * rng.normal(size=true.shape)), ("oracle", true), ("training_mean", 0 * true)):
        folder = tmp_path / "peers" / method
        folder.mkdir(parents=True)
        write(folder / "s1.pos_to_expr.h5ad", estimate.astype(np.float32), rng.permutation(n), method)
        record = folder / "s1.pos_to_expr.status.json"
        record.write_text(json.dumps({"mode": "pos_to_expr", "method": method, "status": "ok"}))
        statuses.append(record)
    items = sections.gene_accuracy_section({("s1", "pos_to_expr", "alphastomics"): [main]}, inputs.peer_samples(statuses))
    assert len(items) == 1
    item = items[0]
    assert item["rival"] == "knn" and item["estimate"] == "posterior mean" and item["n_genes"] == len(genes)
    assert [row["gene"] for row in item["rows"]][:2] == ["g4", "g2"]
    assert float(item["rows"][0]["behind"]) > 0.5  # matched by id: knn's r is ~0.9 however its cells are ordered (unmatched: ~0)
    assert "oracle" in item["medians"] and item["img"].startswith("data:image/png;base64,")
