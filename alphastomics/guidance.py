"""Asking a trained model for tissue that does not exist yet: conditions (classifier-free guidance)
and targets (gradient guidance on expression, inverse design).

- ``--condition cell_type`` conditions every cell on its own label (from the data), and
  ``--condition cell_type=NAME`` every cell on one type; ``--slice-condition key=value`` sets a
  per-slice covariate (condition, genotype, region, time point) the model was trained with.
- ``--target Gad1:high,Slc17a7:low`` (or a TSV of gene, target, weight) asks for expression levels:
  ``high`` is the gene's typical high level in the training data (mean + 1.5 sd of its expressed
  values), ``low`` its floor (0 for normalised counts), a number is taken as is. Optionally only
  for some cells: ``--target-cells`` (a file of cell ids) and/or ``--target-region`` (a box on the
  slice's coordinates, where they are given: ``pos_to_expr``, ``impute``). At every sampling step
  the expression x0 estimate moves down the gradient of
  J = sum_g w_g (E[x_g] - target_g)^2 / (2 sd_g^2), with E[x_g] = P(expressed) x magnitude
  (non-negative by construction); ``--target-scale`` sets the step (1: a magnitude moves all the
  way to its target in one step).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from alphastomics.data.batch import SliceBatch
from alphastomics.data.conditions import ConditionVocabulary
from alphastomics.data.expression import ExpressionCodec
from alphastomics.errors import InputError

HIGH_SDS = 1.5


def apply_conditions(batch: SliceBatch, conditions: ConditionVocabulary | None, cell_types, condition: str | None,
                     slice_conditions: dict[str, str], source: str) -> SliceBatch:
    """Condition codes of a sampling batch: none (0) unless asked for; errors name what is unknown."""
    if conditions is None or not conditions.active:
        if condition or slice_conditions:
            raise InputError(f"{source}: the model was trained without conditions (model.condition_on_cell_type, "
                             "model.slice_covariates): it cannot be conditioned")
        return batch
    B, N = batch.node_mask.shape
    batch.cell_labels = torch.zeros(B, N, dtype=torch.long, device=batch.node_mask.device)
    batch.covariates = torch.zeros(B, len(conditions.covariates), dtype=torch.long, device=batch.node_mask.device)
    if condition:
        key, _, value = condition.partition("=")
        if key != "cell_type":
            raise InputError(f"--condition {condition!r}: only cell_type is a per-cell condition (slice covariates: --slice-condition)")
        if not conditions.cell_types:
            raise InputError(f"{source}: the model was not trained with cell types as a condition")
        if value:
            if value not in conditions.cell_types:
                raise InputError(f"--condition cell_type={value}: unknown type; the model knows {', '.join(conditions.cell_types)}")
            codes = np.full(N, conditions.cell_types.index(value) + 1)
        else:
            if cell_types is None:
                raise InputError(f"{source}: --condition cell_type takes the cells' own labels, and the data have none "
                                 "(give --cell-type-key, or --condition cell_type=NAME)")
            codes = conditions.cell_codes(cell_types, len(cell_types))
        batch.cell_labels[:, : len(codes)] = torch.from_numpy(np.asarray(codes, dtype=np.int64)).to(batch.cell_labels.device)
    for key, value in slice_conditions.items():
        if key not in conditions.covariates:
            raise InputError(f"--slice-condition {key}={value}: the model knows no covariate {key!r} "
                             f"(known: {', '.join(conditions.covariates) or 'none'})")
        values = conditions.covariates[key]
        if value not in values:
            raise InputError(f"--slice-condition {key}={value}: unknown value; known: {', '.join(values)}")
        batch.covariates[:, list(conditions.covariates).index(key)] = values.index(value) + 1
    return batch


def parse_slice_conditions(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise InputError(f"--slice-condition {item!r}: expected key=value")
        out[key] = value
    return out


@dataclass
class Target:
    genes: np.ndarray  # (T,) gene indices
    values: np.ndarray  # (T,) target levels on the data's scale
    weights: np.ndarray  # (T,)
    cells: np.ndarray | None  # (N,) bool: targeted cells (None: all)
    labels: list[str]  # as given, for the output


def region_cells(spec: str, coords: np.ndarray | None) -> np.ndarray:
    """``X0:X1,Y0:Y1[,Z0:Z1]`` -> (N,) bool: the cells whose given coordinates lie in the box, in the
    slice's own units (obsm['spatial']); an empty bound is open (``:500,200:`` is x <= 500 and
    y >= 200), an axis left out is not limited."""
    if coords is None:
        raise InputError(f"--target-region {spec}: a region needs the slice's coordinates, which this mode generates "
                         "(use pos_to_expr or impute, or --target-cells)")
    inside = np.ones(len(coords), dtype=bool)
    axes = spec.split(",")
    if len(axes) > coords.shape[1]:
        raise InputError(f"--target-region {spec}: {len(axes)} axes for {coords.shape[1]}-D coordinates")
    for axis, bounds in enumerate(axes):
        low, sep, high = bounds.strip().partition(":")
        try:
            low_value = float(low) if low.strip() else -np.inf
            high_value = float(high) if high.strip() else np.inf
        except ValueError:
            low_value = high_value = None
        if not sep or low_value is None or low_value > high_value:
            raise InputError(f"--target-region {spec}: expected X0:X1,Y0:Y1[,Z0:Z1] with numbers (empty for open), "
                             f"low <= high; got {bounds!r}")
        inside &= (coords[:, axis] >= low_value) & (coords[:, axis] <= high_value)
    if not inside.any():
        spans = ", ".join(f"{name} {values.min():.4g}..{values.max():.4g}" for name, values in zip("xyz", coords.T))
        raise InputError(f"--target-region {spec}: no cell lies in it (the slice spans {spans})")
    return inside


def parse_target(spec: str, genes: list[str], codec: ExpressionCodec, cell_ids=None, cells_file: str | None = None,
                 coords: np.ndarray | None = None, region: str | None = None) -> Target:
    """``Gene:high,Gene:low,Gene:2.5`` or a TSV (gene, target[, weight]) -> Target, for the cells of
    ``cells_file`` and inside ``region`` (``region_cells``) when given (both: those in both)."""
    rows: list[tuple[str, str, float]] = []
    if Path(spec).is_file():
        table = pd.read_csv(spec, sep=None, engine="python", header=None, comment="#")
        if table.shape[1] < 2:
            raise InputError(f"{spec}: expected columns gene, target[, weight]")
        for _, r in table.iterrows():
            if str(r[0]).lower() == "gene":
                continue
            rows.append((str(r[0]), str(r[1]), float(r[2]) if table.shape[1] > 2 and pd.notna(r[2]) else 1.0))
    else:
        for item in spec.split(","):
            gene, sep, level = item.strip().partition(":")
            if not sep:
                raise InputError(f"--target {item!r}: expected GENE:high, GENE:low or GENE:<level>")
            rows.append((gene, level, 1.0))
    index = {g: i for i, g in enumerate(genes)}
    lower = {g.lower(): i for i, g in enumerate(genes)}
    idx, values, weights, labels = [], [], [], []
    for gene, level, weight in rows:
        i = index.get(gene, lower.get(gene.lower()))
        if i is None:
            raise InputError(f"--target: gene {gene!r} is not one the model knows")
        if level == "high":
            value = float(codec.mean[i] + HIGH_SDS * codec.std[i])
        elif level == "low":
            value = float(codec.floor[i])
        else:
            try:
                value = float(level)
            except ValueError:
                raise InputError(f"--target {gene}:{level}: the level must be high, low or a number") from None
        idx.append(i)
        values.append(value)
        weights.append(weight)
        labels.append(f"{genes[i]}:{level}")
    cells = None
    if cells_file is not None:
        wanted = {line.strip() for line in Path(cells_file).read_text().splitlines() if line.strip()}
        cells = np.array([str(c) in wanted for c in cell_ids])
        if not cells.any():
            raise InputError(f"{cells_file}: none of its cell ids is in the data")
    if region is not None:
        inside = region_cells(region, coords)
        cells = inside if cells is None else cells & inside
        if not cells.any():
            raise InputError(f"--target-region {region}: none of the cells of --target-cells lies in it")
    return Target(np.array(idx), np.array(values, np.float32), np.array(weights, np.float32), cells, labels)


def expected_values(x0: torch.Tensor, codec: ExpressionCodec, genes: np.ndarray) -> torch.Tensor:
    """Differentiable E[x_g] of the target genes from expression channels (..., C) -> (..., T)."""
    G = codec.num_genes
    mean = torch.as_tensor(codec.mean[genes], dtype=x0.dtype, device=x0.device)
    std = torch.as_tensor(codec.std[genes], dtype=x0.dtype, device=x0.device)
    floor = torch.as_tensor(codec.floor[genes], dtype=x0.dtype, device=x0.device)
    magnitude = torch.maximum(x0[..., torch.as_tensor(genes)] * std + mean, floor)
    presence_index = {g: G + k for k, g in enumerate(np.flatnonzero(codec.zero_inflated))}
    probability = torch.ones_like(magnitude)
    for j, g in enumerate(genes):
        if int(g) in presence_index:
            probability[..., j] = ((x0[..., presence_index[int(g)]] + 1.0) / 2.0).clamp(0.0, 1.0)
    return probability * magnitude


def objective(values: torch.Tensor | np.ndarray, target: Target, codec: ExpressionCodec):
    """Per cell J = sum_g w_g (x_g - target_g)^2 / (2 sd_g^2) over the target genes; values (..., T)."""
    lib = torch if isinstance(values, torch.Tensor) else np
    std = codec.std[target.genes]
    if isinstance(values, torch.Tensor):
        std = torch.as_tensor(std, dtype=values.dtype, device=values.device)
        t = torch.as_tensor(target.values, dtype=values.dtype, device=values.device)
        w = torch.as_tensor(target.weights, dtype=values.dtype, device=values.device)
    else:
        t, w = target.values, target.weights
    return lib.sum(w * (values - t) ** 2 / (2 * std**2), -1)


def gradient_guidance(target: Target, codec: ExpressionCodec, scale: float, node_mask: torch.Tensor):
    """The sampler's ``expression_guidance``: scale x grad of J at the x0 estimate, on targeted cells."""
    cells = None if target.cells is None else torch.from_numpy(target.cells)

    def guide(x0: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x0.detach().requires_grad_(True)
            j = objective(expected_values(x, codec, target.genes), target, codec)  # (B, N)
            weight = node_mask.to(j.dtype)
            if cells is not None:
                weight = weight.clone()
                weight[:, : len(cells)] = weight[:, : len(cells)] * cells.to(device=j.device, dtype=j.dtype)
            (grad,) = torch.autograd.grad((j * weight).sum(), x)
        return scale * grad

    return guide
