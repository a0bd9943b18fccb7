"""The summary page (results/summary.html) as the pipeline writes it for the bundled datasets: every
method of every mode, every headline column, wall time and peak memory (issue 33).

Its figures come at one precision (three significant digits, no scientific notation for ordinary
values) and, in headless Chromium, its tables fit a 1,400-pixel window without scrolling.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from alphastomics import cli
from alphastomics.report import tables

SHOTS = Path(__file__).resolve().parents[1] / "test-output" / "report"
WINDOW = 1400

# (mode, methods) as the pipeline runs them on the bundled data
METHODS = {
    "expr_to_pos": ["alphastomics", "novosparc", "celery", "random", "oracle"],
    "pos_to_expr": ["alphastomics", "knn", "training_mean"],
    "impute": ["alphastomics", "tangram", "knn"],
    "joint": ["alphastomics", "real:20180417_BZ5_control", "real:20180419_BZ9_control"],
    "domains": ["alphastomics", "graphst", "pca"],
}
METRICS = {
    "expr_to_pos": ["distance_spearman_median", "knn_preservation_k10", "procrustes_disparity", "extent_ratio_worst",
                    "consensus_distance_spearman_median", "consensus_knn_preservation_k10"],
    "pos_to_expr": ["expr_mean_pearson_gene_median", "expr_mean_spearman_gene_median", "morans_i_corr"],
    "impute": ["expr_mean_pearson_gene_median", "expr_mean_spearman_gene_median"],
    "joint": ["cell_type_composition_l1", "morans_i_corr", "expr_energy_distance_pca", "distance_wasserstein_unit_rms",
              "extent_ratio_worst"],
    "domains": ["embedding_leiden_ari", "embedding_leiden_nmi"],
}
# values of the magnitudes real runs give, the awkward ones included (issue 33's 9.456e-05, -0.003802, 0.9369)
AWKWARD = [9.456e-05, -0.003802, 0.9369, 12345.678, 0.1, 1.0, 250.0, 1.23456e-7]


def pipeline_like_frames(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    rows, runs = [], []
    datasets = {"starmap_mpfc": ["20180424_BZ14_control"], "bdtnp_drosophila": ["slab2"]}
    awkward = iter(AWKWARD * 10)
    for ds, slices in datasets.items():
        for mode, methods in METHODS.items():
            for method in methods:
                for sl in slices:
                    for metric in METRICS[mode]:
                        if metric.startswith("consensus_") and method != "alphastomics":
                            continue
                        value = next(awkward) if rng.random() < 0.3 else float(rng.uniform(-0.2, 1.6))
                        rows.append((ds, sl, mode, method, metric, value))
                    if not method.startswith("real:") and method != "oracle":
                        failed = method == "tangram" and ds == "bdtnp_drosophila"
                        runs.append((ds, sl, mode, method, "failed" if failed else "ok",
                                     "too slow: stopped at the time limit of 300 s" if failed else "",
                                     float(rng.uniform(1, 3000)), float(rng.uniform(80, 40000))))
        runs.append((ds, "", "train", "alphastomics", "ok", "", 1234.56, 2345.6))
    metrics = pd.DataFrame(rows, columns=["dataset", "slice", "mode", "method", "metric", "value"])
    run_table = pd.DataFrame(runs, columns=["dataset", "slice", "mode", "method", "status", "reason", "wall_s", "max_rss_mb"])
    return metrics, run_table


def write_summary(folder: Path) -> Path:
    metrics, runs = pipeline_like_frames()
    metrics.to_csv(folder / "metrics.tsv", sep="\t", index=False)
    runs.to_csv(folder / "methods.tsv", sep="\t", index=False)
    out = folder / "summary.html"
    assert cli.main(["report", "--summary", "--metrics", str(folder / "metrics.tsv"), "--runs", str(folder / "methods.tsv"),
                     "--targets", str(folder / "targets.txt"), "--out", str(out)]) == 0
    return out


# ----------------------------------------------------------------------------------------------
# figures at one precision

FIGURE = re.compile(r"^-?(\d{1,3}(,\d{3})+|\d+(\.\d+)?|\d\.\d{2}e-\d{2})$")


def significant_digits(figure: str) -> int | None:
    """Significant digits of a figure as the page prints it; None for an integer of 1,000 or more
    (printed to the unit) and for zero."""
    digits = figure.lstrip("-")
    if "e" in digits:
        digits = digits.split("e")[0]
    elif "," in digits or (digits.isdigit() and int(digits) >= 1000) or float(digits) == 0:
        return None
    return len(digits.replace(".", "").lstrip("0"))


def page_figures(html: str) -> list[str]:
    """The figures of the page's number cells (a figure's rank, consensus mark and training time apart)."""
    out = []
    for cell in re.findall(r'<td class="num[^"]*"[^>]*>(.*?)</td>', html, flags=re.S):
        text = re.sub(r"<sup>.*?</sup>|<span.*?</span>", " ", cell, flags=re.S)
        text = re.sub(r"<[^>]+>", " ", text)
        out += [t for t in re.findall(r"-?[\d.,]+(?:e-\d+)?", text) if any(ch.isdigit() for ch in t)]
    return out


@pytest.mark.parametrize("value, text", [(9.456e-05, "0.0000946"), (-0.003802, "-0.00380"), (0.9369, "0.937"),
                                         (0.65, "0.650"), (1.0, "1.00"), (0.99996, "1.00"), (250.0, "250"),
                                         (12.345, "12.3"), (999.7, "1,000"), (12345.678, "12,346"),
                                         (1.23456e-7, "1.23e-07"), (0.0, "0"), (float("nan"), "–")])
def test_figures_have_three_significant_digits_in_plain_decimals(value, text):
    assert tables.fmt_value(value) == text


def test_every_figure_of_the_summary_page_has_one_precision(tmp_path):
    html = write_summary(tmp_path).read_text()
    figures = page_figures(html)
    assert len(figures) > 100  # every headline column, wall time and memory of every method
    odd = [f for f in figures if not FIGURE.match(f)]
    assert odd == [], f"figures in another notation: {odd[:10]}"
    imprecise = [f for f in figures if significant_digits(f) not in (None, 3) and not f.isdigit()]
    assert imprecise == [], f"figures not at three significant digits: {imprecise[:10]}"
    scientific = [f for f in figures if "e" in f and abs(float(f)) >= 1e-5]
    assert scientific == []
    assert "0.0000946" in figures and "-0.00380" in figures and "0.937" in figures


# ----------------------------------------------------------------------------------------------
# a laptop's window


def test_summary_page_fits_a_1400_pixel_window(tmp_path):
    try:  # tests/ is on sys.path under pytest's default import mode
        import browser as _browser
    except ImportError:
        from tests import browser as _browser
    try:
        binary = _browser.find_chromium()
    except _browser.BrowserUnavailable as err:
        pytest.skip(f"headless browser test needs chromium: {err}")
    out = write_summary(tmp_path)
    width = WINDOW - 15  # a window of 1,400 pixels less its scroll bar
    with _browser.Browser(binary) as b:
        page = b.open(out)
        page.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
        page.evaluate("new Promise(r => requestAnimationFrame(() => r(1)))")
        assert page.console_errors == []
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"the page is {overflow}px wider than the window"
        scrolled = page.evaluate(
            "Array.from(document.querySelectorAll('.scroll')).map(d => d.scrollWidth - d.clientWidth)")
        assert len(scrolled) == 2 and max(scrolled) <= 0, f"tables wider than a {WINDOW}px window by {scrolled} px"
        page.screenshot(SHOTS / "summary_1400.png", full_page=True, width=width)
