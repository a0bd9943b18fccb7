"""Scores of conditional generation and inverse design (alphastomics.guidance), each beside the
same seeds drawn without guidance (``layers['expr_pred_unguided']`` of the sample file).

- Conditions: the share of generated cells that a kNN classifier trained on real training cells
  assigns to the type they were conditioned on, and the energy distance (an MMD with the distance
  kernel, in the PCA space of the training cells) from the generated cells of each conditioned type
  to the real training cells of that type, averaged over types.
- Targets: the share of targeted cells meeting every target (a "high" or "low" target is met at or
  beyond its level, a number within half a standard deviation of it), the per-cell objective with
  and without guidance, and the energy distance of the other genes to real cells: designed cells
  must stay realistic where the design did not ask for a change.
- Perturbations (a slice drawn under another value of a slice covariate, e.g. condition=treated):
  the predicted per-gene shift (mean generated expression under the requested value minus the same
  seeds under the slice's own value) against the observed shift (mean of the real slices that have
  the requested value minus that of the slices with the slice's own value, see
  alphastomics.references.perturbation_shifts): Pearson over genes, the share of
  clearly shifted genes (observed shift beyond 0.25 sd) whose predicted shift has the same sign,
  and the least-squares slope of predicted on observed (1: the right size).
"""

from __future__ import annotations

import numpy as np

from alphastomics.io.sample_file import EXPR_PRED, EXPR_PRED_MEAN, EXPR_PRED_MEAN_UNGUIDED, EXPR_PRED_UNGUIDED
from alphastomics.metrics.distribution import energy_distance

MIN_CELLS_PER_TYPE = 10
TOLERANCE_SDS = 0.5


def condition_accuracy(predicted: np.ndarray, conditions: np.ndarray) -> float:
    """Share of conditioned cells (non-empty condition) whose predicted type is their condition."""
    conditioned = np.array([bool(c) for c in conditions])
    if not conditioned.any():
        return float("nan")
    return float(np.mean(predicted[conditioned].astype(str) == conditions[conditioned].astype(str)))


def per_type_energy(generated_pcs: np.ndarray, conditions: np.ndarray, reference_pcs: np.ndarray, reference_types: np.ndarray,
                    max_points: int, seed: int) -> float:
    """Mean over conditioned types (>= 10 generated and real cells) of the energy distance between
    the generated cells conditioned on a type and the real cells of that type."""
    distances = []
    for cell_type in sorted({str(c) for c in conditions if c}):
        generated = generated_pcs[conditions.astype(str) == cell_type]
        real = reference_pcs[reference_types.astype(str) == cell_type]
        if len(generated) >= MIN_CELLS_PER_TYPE and len(real) >= MIN_CELLS_PER_TYPE:
            distances.append(energy_distance(generated, real, max_points, seed))
    return float(np.mean(distances)) if distances else float("nan")


def targets_met(values: np.ndarray, specs: list[str], levels: np.ndarray, sds: np.ndarray) -> np.ndarray:
    """(cells,) bool: every target gene of a cell meets its target; values (cells, targets)."""
    met = np.ones(len(values), dtype=bool)
    for j, spec in enumerate(specs):
        kind = spec.rsplit(":", 1)[-1]
        tolerance = TOLERANCE_SDS * sds[j]
        if kind == "high":
            ok = values[:, j] >= levels[j] - tolerance
        elif kind == "low":
            ok = values[:, j] <= levels[j] + tolerance
        else:
            ok = np.abs(values[:, j] - levels[j]) <= tolerance
        met &= ok
    return met


def standardised_energy(generated: np.ndarray, real: np.ndarray, max_points: int, seed: int) -> float:
    """Energy distance between two expression sets, each gene scaled by its sd in ``real``."""
    sd = real.std(0)
    keep = sd > 0
    return energy_distance(generated[:, keep] / sd[keep], real[:, keep] / sd[keep], max_points, seed)


def shift_layers(layers) -> tuple[str, str]:
    """The layers a perturbation's predicted shift is measured on: the posterior means of the draw
    and of its baseline where the sample has both (pos_to_expr, impute), else the first draws."""
    if EXPR_PRED_MEAN in layers and EXPR_PRED_MEAN_UNGUIDED in layers:
        return EXPR_PRED_MEAN, EXPR_PRED_MEAN_UNGUIDED
    return EXPR_PRED, EXPR_PRED_UNGUIDED


SHIFTED_SDS = 0.25  # an observed per-gene shift beyond this many sds of the gene counts as a real change


def shift_agreement(predicted: np.ndarray, observed: np.ndarray, sds: np.ndarray) -> dict[str, float]:
    """Agreement of predicted and observed per-gene mean shifts (each (genes,); ``sds`` the genes'
    spread in the real cells): Pearson, sign agreement over the clearly shifted genes, and slope."""
    predicted, observed = np.asarray(predicted, np.float64), np.asarray(observed, np.float64)
    shifted = np.abs(observed) > SHIFTED_SDS * np.asarray(sds, np.float64)
    pearson = float("nan")
    if len(observed) >= 3 and np.ptp(predicted) > 0 and np.ptp(observed) > 0:
        pearson = float(np.corrcoef(predicted, observed)[0, 1])
    denominator = float(observed @ observed)
    return {"perturbation_shift_pearson": pearson,
            "perturbation_sign_agreement": float(np.mean(np.sign(predicted[shifted]) == np.sign(observed[shifted])))
            if shifted.any() else float("nan"),
            "perturbation_shift_slope": float(predicted @ observed) / denominator if denominator > 0 else float("nan"),
            "perturbation_shifted_genes": float(shifted.sum())}
