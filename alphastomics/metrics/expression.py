"""Expression metrics: errors and per-gene / per-cell correlations of true vs generated expression.

Inputs are (cells, genes) arrays restricted to measured genes by the caller. Correlations of a
constant vector are undefined: a gene or cell whose truth is constant is left out, one whose
generated values alone are constant counts as 0 (see ``correlation``); the details report both counts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata

from alphastomics.metrics.correlation import is_constant, scored_values

# Columns (or rows) handled at once: bounds the float64 copies to a few hundred MB on big slices.
_CHUNK_ELEMENTS = 8_000_000


def pearson_per_column(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``a`` with the same column of ``b``; NaN where either is constant."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    denominator = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    numerator = (a * b).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = numerator / denominator
    corr[denominator == 0] = np.nan
    # Rounding can push a perfect correlation a hair past 1.
    return np.clip(corr, -1.0, 1.0)


def spearman_per_column(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation per column: Pearson of average ranks (ties as in scipy.stats.spearmanr)."""
    return pearson_per_column(rankdata(a, axis=0), rankdata(b, axis=0))


def _per_column_chunked(fn: Callable, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    step = max(1, _CHUNK_ELEMENTS // max(1, a.shape[0]))
    return np.concatenate([fn(a[:, s:s + step], b[:, s:s + step]) for s in range(0, a.shape[1], step)])


def _per_row_chunked(fn: Callable, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    step = max(1, _CHUNK_ELEMENTS // max(1, a.shape[1]))
    return np.concatenate([fn(a[s:s + step].T, b[s:s + step].T) for s in range(0, a.shape[0], step)])


def gene_pearson(true: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """(G,) each gene's Pearson correlation over cells, scored as ``expr_*_pearson_gene_*`` score it:
    NaN where the true gene is constant (left out), 0 where only the estimate is."""
    r = _per_column_chunked(pearson_per_column, true, estimate)
    return np.where(is_constant(true, 0), np.nan, np.where(is_constant(estimate, 0), 0.0, r))


def _summaries(scores: np.ndarray) -> tuple[float, float]:
    if scores.size == 0:
        return float("nan"), float("nan")
    return float(np.median(scores)), float(np.mean(scores))


def expression_metrics(true: np.ndarray, generated: np.ndarray) -> tuple[dict[str, float], dict[str, dict]]:
    """MSE, MAE and median/mean per-gene and per-cell Pearson and Spearman correlations.

    Returns (metric name -> value, metric name -> how it was computed).
    """
    if true.shape != generated.shape:
        raise ValueError(f"true expression {true.shape} and generated expression {generated.shape} differ in shape")
    n_cells, n_genes = true.shape
    values: dict[str, float] = {}
    how: dict[str, dict] = {}
    error_how = {"genes": "measured genes only", "n_cells": n_cells, "n_genes": n_genes}
    diff = np.asarray(true, dtype=np.float64) - np.asarray(generated, dtype=np.float64)
    values["expr_mse"] = float(np.mean(diff * diff))
    how["expr_mse"] = {"formula": "mean over cells and genes of (true - generated)^2", **error_how}
    values["expr_mae"] = float(np.mean(np.abs(diff)))
    how["expr_mae"] = {"formula": "mean over cells and genes of |true - generated|", **error_how}
    del diff

    # constant along the vector correlated: over cells for a gene (axis 0), over genes for a cell (axis 1)
    constant = {"gene": (is_constant(true, 0), is_constant(generated, 0)),
                "cell": (is_constant(true, 1), is_constant(generated, 1))}
    for corr_name, fn in (("pearson", pearson_per_column), ("spearman", spearman_per_column)):
        for axis_name, per in (("gene", _per_column_chunked), ("cell", _per_row_chunked)):
            scores, counts = scored_values(per(fn, true, generated), *constant[axis_name], axis_name)
            median, mean = _summaries(scores)
            base = {
                "correlation": corr_name,
                "per": axis_name,
                "vector": "over cells" if axis_name == "gene" else "over measured genes",
                **counts,
                "undefined": "true vector constant: left out; only the generated vector constant: counted as 0",
                "genes": "measured genes only",
            }
            values[f"expr_{corr_name}_{axis_name}_median"] = median
            how[f"expr_{corr_name}_{axis_name}_median"] = {"summary": "median", **base}
            values[f"expr_{corr_name}_{axis_name}_mean"] = mean
            how[f"expr_{corr_name}_{axis_name}_mean"] = {"summary": "mean", **base}
    return values, how
