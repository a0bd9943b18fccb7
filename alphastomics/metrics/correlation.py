"""Correlations that are undefined because one side is constant, counted so that numbers mean what they say.

A Pearson or Spearman correlation (and Moran's I) of a constant vector is 0/0. Two cases differ:

- the *true* vector is constant (a gene not expressed in the slice): no prediction can be scored
  on it, whatever it is, so the item is left out -- the same for every method;
- only the *generated* vector is constant (a collapsed prediction): it carries no information on
  the pattern, so it counts as 0. Dropping it instead would let a prediction that collapsed on its
  hardest genes or cells score higher than one that tried.

Both counts go into the metric's details (the JSON beside the metric table).
"""

from __future__ import annotations

import numpy as np


def is_constant(values: np.ndarray, axis: int) -> np.ndarray:
    """True where the values along ``axis`` are all equal (NaN-free input)."""
    values = np.asarray(values)
    if values.shape[axis] == 0:
        return np.ones(np.delete(values.shape, axis), dtype=bool)
    return np.ptp(values, axis=axis) == 0


def scored_values(per_item: np.ndarray, true_constant: np.ndarray, generated_constant: np.ndarray, item: str) -> tuple[np.ndarray, dict]:
    """Per-item scores to summarise, and the counts behind them.

    ``per_item`` holds NaN where undefined. Items whose truth is constant are left out; items whose
    truth varies and whose generated side is constant count as 0. ``item`` names the unit
    ("gene", "cell") in the count keys.
    """
    per_item = np.asarray(per_item, dtype=np.float64)
    left_out = np.asarray(true_constant, dtype=bool)
    zeroed = ~left_out & np.asarray(generated_constant, dtype=bool)
    scores = np.where(zeroed, 0.0, per_item)[~left_out]
    counts = {
        f"n_{item}s_used": int(scores.size),
        f"n_{item}s_true_constant_left_out": int(left_out.sum()),
        f"n_{item}s_generated_constant_counted_as_0": int(zeroed.sum()),
    }
    return scores, counts


def pearson_or_zero(true: np.ndarray, generated: np.ndarray) -> float:
    """Pearson correlation of two vectors; 0 when only ``generated`` is constant, NaN when ``true``
    is constant or fewer than two entries are given (nothing to score)."""
    true = np.asarray(true, dtype=np.float64)
    generated = np.asarray(generated, dtype=np.float64)
    if true.size < 2 or np.ptp(true) == 0:
        return float("nan")
    if np.ptp(generated) == 0:
        return 0.0
    return float(np.clip(np.corrcoef(true, generated)[0, 1], -1.0, 1.0))
