"""Draws with what a user asks of the model beyond a mode (alphastomics.guidance): conditions,
expression targets, the cell types a joint sample is drawn with, and the same seeds drawn without
them to show what the guidance changed."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from alphastomics import GENERATED_BY_MODE
from alphastomics.data.batch import SliceBatch
from alphastomics.diffusion.sampler import FULL_INTERVAL
from alphastomics.draws import Draws, default_expression_graph, draw_samples, refined_estimates
from alphastomics.errors import InputError
from alphastomics.expression_graph import ExpressionGraph
from alphastomics.guidance import apply_conditions, objective, parse_target
from alphastomics.io.sample_file import CELL_TYPE_DRAWN, CONDITION_CELL_TYPE, TARGET_OBJECTIVE, TARGET_OBJECTIVE_UNGUIDED, TARGETED
from alphastomics.io.shards import SliceData

if TYPE_CHECKING:
    from alphastomics.checkpoint import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class GuidanceRequest:
    """What a user asks of the model beyond a mode (alphastomics.guidance)."""

    condition: str | None = None  # "cell_type" (the cells' own labels) or "cell_type=NAME"
    slice_conditions: dict[str, str] = field(default_factory=dict)
    scale: float | None = None  # classifier-free guidance scale (None: the default of ``guidance_settings``)
    target: str | None = None  # "Gene:high,..." or a TSV
    target_scale: float = 1.0
    target_cells: str | None = None  # file of cell ids
    target_region: str | None = None  # "X0:X1,Y0:Y1[,Z0:Z1]" on the given coordinates
    joint_cell_types: str | None = None  # joint: "training" | "none" (default: sampling.joint_cell_types)


CONDITION_GUIDANCE_SCALE = 2.0  # most generated cells are typed as their condition, far more than unconditionally
# Cell types drawn for a joint sample: pushed at the middle noise levels only. Pushed at every level
# they typed the cells better but moved the expression distribution away from real cells; at the
# middle levels composition, neighbourhood enrichment and Moran's I still improved with the energy
# distance no worse (benchmarks/conditions.py --joint-guidance). 3 rather than 2 there: on the
# three datasets with cell types the composition and the neighbourhood enrichment improved, at some
# cost in expression realism (docs/findings/conditions.md, "Guidance of the drawn types").
DRAWN_TYPES_GUIDANCE = (3.0, (0.2, 0.7))


def guidance_settings(request: GuidanceRequest, types_drawn: bool) -> tuple[float, tuple[float, float]]:
    """(scale, interval of noise levels) of a request's classifier-free guidance: the scale asked
    for, at every level; by default 2 at every level for conditions the user gives, 3 at the
    middle levels for cell types drawn for a joint sample; 1 with nothing to guide."""
    if request.condition or request.slice_conditions:
        return (CONDITION_GUIDANCE_SCALE if request.scale is None else request.scale), FULL_INTERVAL
    if types_drawn:
        return DRAWN_TYPES_GUIDANCE if request.scale is None else (request.scale, FULL_INTERVAL)
    return 1.0, FULL_INTERVAL


def drawn_cell_types(model: LoadedModel, request: GuidanceRequest, mode: str, n: int, seed: int) -> list[str] | None:
    """joint on a model conditioned on cell type: each cell's type drawn from the training
    composition (seeded), the tissue then generated given them; None where that does not apply
    (other modes, an explicit --condition, ``none``, checkpoints without a recorded composition)."""
    setting = request.joint_cell_types or model.config.sampling.joint_cell_types
    if mode != "joint" or request.condition or setting == "none" or model.conditions is None:
        return None
    drawn = model.conditions.draw_cell_types(n, seed)
    if drawn is None and model.conditions.cell_types:
        log.info("the checkpoint records no training composition of cell types: joint is sampled unconditionally")
    return drawn


def own_slice_conditions(data: SliceData, request: GuidanceRequest) -> dict[str, str]:
    """The slice's recorded values of the covariates a request sets, where the slice records them:
    the baseline ("as measured") that a perturbation is drawn against."""
    return {key: data.covariates[key] for key in request.slice_conditions if key in (data.covariates or {})}


def patch_size_caveat(model: LoadedModel, mode: str, n_cells: int) -> str | None:
    """Why positions generated for ``n_cells`` cells cannot be trusted, or None.

    A model trained on spatial patches (training.data_mode: cell) learned to lay out
    ``cells_per_example`` cells; asked to place a whole slice of many more cells it packs them into
    about one patch's extent, too small along the slice's long axes and too thick along a thin one
    (docs/findings/training.md). Positions given (pos_to_expr, impute) are unaffected.
    """
    training = model.config.training
    if "position" not in GENERATED_BY_MODE[mode] or training.data_mode != "cell" or n_cells <= 1.5 * training.cells_per_example:
        return None
    return (f"the model was trained on spatial patches of {training.cells_per_example} cells (training.data_mode: cell) and is "
            f"asked to lay out {n_cells} cells: generated positions keep about one patch's extent, not the tissue's. "
            f"Train with data_mode: slice (or cells_per_example >= {n_cells}) to generate whole slices")


def guided_draws(model: LoadedModel, batch: SliceBatch, data: SliceData, mode: str, num_samples: int, seed: int,
                 steps: int | None, sampler: str, progress: bool, request: GuidanceRequest | None, source: str,
                 posterior_mean_draws: int | None = None, expression_temperature: float | None = None,
                 expression_graph: ExpressionGraph | None = None) -> tuple[Draws, dict, dict[str, np.ndarray], Draws | None]:
    """Draws with the request's conditions and target; (draws, uns entries, obs columns, the same
    seeds drawn without conditions or target when either was asked for). expr_to_pos and impute:
    the draws' per-cell estimates smoothed over the cells' neighbours in their given expression
    (``expression_graph``, default the model's sampling settings; alphastomics.expression_graph),
    the consensus layout spaced as the draws' cells are (alphastomics.draws.refined_estimates)."""
    request = request or GuidanceRequest()
    drawn = drawn_cell_types(model, request, mode, len(data.cell_ids), seed)
    if drawn is not None:
        batch = apply_conditions(batch, model.conditions, drawn, "cell_type", request.slice_conditions, source)
    else:
        batch = apply_conditions(batch, model.conditions, data.cell_types, request.condition, request.slice_conditions, source)
    target = None
    if request.target:
        if "expression" not in GENERATED_BY_MODE[mode]:
            raise InputError(f"--target steers generated expression: mode {mode} generates none")
        given = None if "position" in GENERATED_BY_MODE[mode] else data.coords[:, : data.n_dims]
        target = parse_target(request.target, model.genes, model.codec, data.cell_ids, request.target_cells, given,
                              request.target_region)
    scale, interval = guidance_settings(request, drawn is not None)
    expression_graph = expression_graph or default_expression_graph(model, mode)
    draws = draw_samples(model, batch, mode, num_samples, seed, steps, sampler, progress, scale, target, request.target_scale,
                         posterior_mean_draws, interval, expression_temperature)
    draws = refined_estimates(draws, data.expression, batch, mode, expression_graph)
    uns, obs = {}, {}
    caveat = patch_size_caveat(model, mode, len(data.cell_ids))
    if caveat:
        log.warning("%s: %s", data.slice_id, caveat)
        uns["caveat"] = caveat
    if drawn is not None:
        obs[CELL_TYPE_DRAWN] = np.array(drawn, dtype=object)
        # lists, not a dict keyed by type: names such as "eL2/3" are not valid HDF5 keys
        uns["joint_cell_types"] = {"drawn_from": "training composition, counts rounded", "seed": seed, "guidance_scale": scale,
                                   "guidance_interval": list(interval),
                                   "cell_types": list(model.conditions.cell_types),
                                   "fractions": [float(f) for f in model.conditions.cell_type_fractions]}
    unguided = None
    own = own_slice_conditions(data, request)
    if request.condition or request.slice_conditions or target is not None:
        # the same seeds without conditions or target: what the guidance changed, cell by cell; a
        # slice condition is compared with the slice's own value of that covariate (a perturbation:
        # this tissue under the other condition against this tissue as it was measured)
        plain = dataclasses.replace(batch, cell_labels=None if batch.cell_labels is None else torch.zeros_like(batch.cell_labels),
                                    covariates=None if batch.covariates is None else torch.zeros_like(batch.covariates))
        if own or drawn is not None:  # drawn cell types are part of a joint sample, not guidance: kept
            plain = apply_conditions(plain, model.conditions, drawn if drawn is not None else data.cell_types,
                                     "cell_type" if drawn is not None else None, own, source)
        # its draws are kept (expr_pred_unguided); its posterior mean only where a perturbation's shift is
        # measured on it (expr_pred_mean_unguided, the same noises as the guided one), else the fewest noises
        unguided = draw_samples(model, plain, mode, num_samples, seed, steps, sampler, progress,
                                posterior_mean_draws=posterior_mean_draws if request.slice_conditions else num_samples,
                                expression_temperature=expression_temperature)
        unguided = refined_estimates(unguided, data.expression, plain, mode, expression_graph)
    if request.condition or request.slice_conditions:
        uns["conditions"] = {"cell_type": request.condition or "", "slice_conditions": dict(request.slice_conditions),
                             "baseline_slice_conditions": own, "guidance_scale": scale}
        if batch.cell_labels is not None and request.condition:
            names = ["", *model.conditions.cell_types]
            obs[CONDITION_CELL_TYPE] = np.array([names[c] for c in batch.cell_labels[0, : len(data.cell_ids)].tolist()], dtype=object)
    if target is not None:
        genes = target.genes
        obs[TARGET_OBJECTIVE] = objective(draws.expression[0][:, genes], target, model.codec).astype(np.float32)
        obs[TARGET_OBJECTIVE_UNGUIDED] = objective(unguided.expression[0][:, genes], target, model.codec).astype(np.float32)
        if target.cells is not None:
            obs[TARGETED] = target.cells
        uns["target"] = {"genes": [model.genes[g] for g in genes], "spec": target.labels, "levels": target.values.tolist(),
                         "weights": target.weights.tolist(), "scale": request.target_scale, "region": request.target_region or "",
                         "unguided_mean": unguided.expression[0][:, genes].mean(0).tolist(),
                         "n_targeted_cells": int(len(data.cell_ids) if target.cells is None else target.cells.sum())}
    return draws, uns, obs, unguided
