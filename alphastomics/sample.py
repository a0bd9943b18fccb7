"""Sampling one slice in one mode -> an h5ad with true and generated values side by side."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from alphastomics import GENERATED_BY_MODE, MODES, __version__
from alphastomics.checkpoint import LoadedModel, load_model
from alphastomics.config import JOINT_CELL_TYPES, check_expression_temperature
from alphastomics.data.batch import SliceBatch
from alphastomics.data.slices import collate, make_example
from alphastomics.diffusion.sampler import FULL_INTERVAL, SAMPLERS, sample
from alphastomics.diffusion.schedule import expression_noise, position_noise
from alphastomics.errors import InputError
from alphastomics.guidance import (
    Target,
    apply_conditions,
    gradient_guidance,
    objective,
    parse_slice_conditions,
    parse_target,
)
from alphastomics.heldout import heldout_genes
from alphastomics.user_data import NORMALIZATIONS as USER_NORMALIZATIONS
from alphastomics.user_data import UserData, coordinates_as_slice, empty_slice, read_user_h5ad
from alphastomics.io.files import atomic_output
from alphastomics.io.manifest import load_manifest
from alphastomics.io.shards import SliceData, load_slice
from alphastomics.layout import (
    CONSENSUS_KEY,
    JOINT_EXPRESSION_DRAWS_KEY,
    JOINT_POSITION_DRAWS_KEY,
    consensus_layout,
    procrustes_mean,
)

log = logging.getLogger(__name__)

GENERATED = GENERATED_BY_MODE


@dataclass
class Draws:
    """S draws of one slice, decoded to source units: expression (S, N, G), coordinates (S, N, 3)."""

    expression: np.ndarray
    coordinates: np.ndarray
    embedding: np.ndarray  # (N, D) of the first draw
    seeds: list[int]
    expected_expression: np.ndarray | None = None  # (N, G) posterior mean (Rao-Blackwellised), pos_to_expr
    posterior_mean_draws: int = 0  # starting noises behind expected_expression / the shared frame's consensus layout
    consensus_positions: np.ndarray | None = None  # (N, d) expr_to_pos: the consensus layout (alphastomics.layout)


def draw_samples(model: LoadedModel, batch: SliceBatch, mode: str, num_samples: int, seed: int, steps: int | None,
                 sampler: str = "ancestral", progress: bool = True, guidance_scale: float = 1.0,
                 target: Target | None = None, target_scale: float = 1.0, posterior_mean_draws: int | None = None,
                 guidance_interval: tuple[float, float] = FULL_INTERVAL, expression_temperature: float | None = None) -> Draws:
    """``num_samples`` draws of the one slice in ``batch``; draw i uses its own generator seeded ``seed + i``,
    so each draw is reproducible alone whatever the batch it was made in. ``guidance_scale``:
    classifier-free guidance of the conditions in ``batch`` (a push past 1 only within
    ``guidance_interval`` of the noise levels, alphastomics.diffusion.sampler); ``target``: gradient guidance of
    expression (alphastomics.guidance). pos_to_expr and impute: the posterior mean of expression
    averages ``posterior_mean_draws`` starting noises (seeds ``seed + i``; default
    sampling.posterior_mean_draws, at least ``num_samples``). ``expression_temperature``: default
    sampling.expression_temperature (alphastomics.diffusion.sampler)."""
    if expression_temperature is None:
        expression_temperature = model.config.sampling.expression_temperature
    seeds = [seed + i for i in range(num_samples)]
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    known = batch.repeat(num_samples)
    guide = None
    if target is not None:
        guide = gradient_guidance(target, model.codec, target_scale, known.node_mask)
    expression, positions = sample(
        model.network, model.schedule, known, "expression" in GENERATED[mode], "position" in GENERATED[mode],
        centred_positions=model.frame.kind == "per_slice", steps=steps, generator=generators, progress=progress,
        sampler=sampler, guidance_scale=guidance_scale, guidance_interval=guidance_interval, expression_guidance=guide,
        expression_temperature=expression_temperature,
    )
    embedding = cell_embedding(model.network, expression[:1], positions[:1], batch)
    n = int(batch.node_mask[0].sum())
    n_dims = 3 if bool(batch.dim_mask[0, 2]) else 2
    decoded = model.codec.decode(expression[:, :n].cpu().numpy())
    coordinates = np.stack([model.frame.to_source(p[:n].cpu().numpy(), n_dims) for p in positions])
    expected, consensus, k = None, None, 0
    if mode in ("pos_to_expr", "impute"):
        k = max(posterior_mean_draws or model.config.sampling.posterior_mean_draws, num_samples)
        expected = expected_expression(model, batch, [seed + i for i in range(k)], chunk=num_samples)[:n]
        if mode == "pos_to_expr" and model.expression_calibration is not None:  # imputation is conditioned on the other genes
            expected = expected * model.expression_calibration
    elif mode == "expr_to_pos":
        posterior_mean = None
        if model.frame.kind == "shared":
            k = max(posterior_mean_draws or model.config.sampling.posterior_mean_draws, num_samples)
            posterior_mean = model.frame.to_source(expected_positions(model, batch, [seed + i for i in range(k)],
                                                                      chunk=num_samples)[:n], n_dims)[:, :n_dims]
        consensus = consensus_layout(coordinates[:, :, :n_dims].astype(np.float64), posterior_mean)
    return Draws(decoded, coordinates, embedding[:n], seeds, expected, k, consensus)


@torch.no_grad()
def expected_expression(model: LoadedModel, batch: SliceBatch, seeds: list[int], chunk: int = 8) -> np.ndarray:
    """Posterior mean of expression at the given coordinates, from the same S draws.

    The plain average of S sampled expression matrices carries their sampling noise (the spread
    of single cells, about the whole variance of a gene when position says little about it), so
    with a few draws it scores worse than no model at all. Each draw's outcome is a function of
    its starting noise x_T, and the denoiser's x0 estimate at the first step is E[x0 | x_T, given
    values], the expected outcome of that draw: averaging those over the draws (Rao-Blackwell)
    estimates the same posterior mean without the sampling noise. Decoded as P(expressed) times
    the expected magnitude. (STARmap BZ14, S = 4: average of the draws MSE 4.8, training mean 3.51,
    this estimate 3.49.) ``batch`` holds the one slice; the starting noises are evaluated ``chunk``
    at a time, so memory stays that of ``chunk`` copies of the slice however many seeds.
    """
    total = None
    for first in range(0, len(seeds), chunk):
        part = seeds[first:first + chunk]
        estimate = _first_step_expectation(model, batch.repeat(len(part)), part)
        total = estimate.sum(0) if total is None else total + estimate.sum(0)
    return total / len(seeds)


# the slices and starting noises behind the calibration: a per-gene mean over every cell of them
CALIBRATION_SLICES = 8
CALIBRATION_DRAWS = 8


@torch.no_grad()
def expression_level_calibration(model: LoadedModel, data_dir: str | Path) -> np.ndarray:
    """(G,) factors that give the pos_to_expr posterior mean, averaged over the training cells, the
    training cells' mean expression of each gene (1 where nothing was measured).

    A calibrated model's posterior mean averages to the data's mean; a briefly trained one misses
    it per gene by more than the data's own slice-to-slice spread, so that its posterior mean can
    score a worse MSE than predicting the training mean (STARmap BZ14: 3.517 against 3.509). The
    factor corrects the level only: correlations over cells are unchanged. Measured on the held-out
    slices, MSE before -> after: STARmap 3.517 -> 3.490, BDTNP 0.0202 -> 0.0198, osmFISH 5.155 ->
    5.142, seqFISH 0.3497 -> 0.3472. Computed by ``alphastomics export --data`` on up to
    ``CALIBRATION_SLICES`` training slices, ``CALIBRATION_DRAWS`` starting noises each."""
    G = model.codec.num_genes
    measured_total, predicted_total = np.zeros(G), np.zeros(G)
    for slice_id in model.train_slices[:CALIBRATION_SLICES]:
        data = load_slice(data_dir, slice_id)
        n = len(data.cell_ids)
        predicted = expected_expression(model, known_batch(model, data, "pos_to_expr"), list(range(CALIBRATION_DRAWS)))[:n]
        measured = data.gene_mask.astype(bool)
        measured_total += np.where(measured, data.expression.sum(0), 0.0)
        predicted_total += np.where(measured, predicted.sum(0), 0.0)
    return np.divide(measured_total, predicted_total, out=np.ones(G), where=predicted_total > 0).astype(np.float32)


@torch.no_grad()
def expected_positions(model: LoadedModel, batch: SliceBatch, seeds: list[int], chunk: int = 8) -> np.ndarray:
    """Posterior mean of positions given expression, in a shared frame (model units, (N, 3)).

    As for expression (``expected_expression``): the x0 estimate at the first step from each
    starting noise, averaged over the seeds. It is a point estimate, where each cell most likely
    is: it ranks distances and keeps neighbourhoods better than any one draw (BDTNP slab2: kNN@10
    0.32 against 0.10), but pulls cells whose place the model is unsure of towards the middle,
    so the tissue's extent along such axes shrinks (0.40 there): the consensus layout
    (alphastomics.layout) gives it back the draws' spread. In a per-slice frame the first step's
    orientation is set by the noise alone, and averaging estimates in different orientations means
    nothing: there the consensus starts from the Procrustes mean of the draws instead.
    """
    total = None
    T = model.schedule.steps
    ab = model.schedule.alpha_bar("position")[T]
    for first in range(0, len(seeds), chunk):
        part = seeds[first:first + chunk]
        known = batch.repeat(len(part))
        B = known.node_mask.shape[0]
        noise = position_noise(known.positions.shape, known.node_mask.cpu(), known.dim_mask.cpu(), False,
                               [torch.Generator().manual_seed(s) for s in part]).to(known.positions.device)
        start = torch.where(known.dim_mask[:, None, :].bool(), noise, known.positions)
        zeros = torch.zeros(B, dtype=torch.long, device=start.device)
        pred = model.network(known.expression, start, zeros, torch.full((B,), T, dtype=torch.long, device=start.device),
                             torch.ones(B, device=start.device), ab * torch.ones(B, device=start.device), known.node_mask,
                             known.gene_mask, known.dim_mask, cell_labels=known.cell_labels, covariates=known.covariates)
        estimate = pred.positions.float().sum(0).cpu().numpy()
        total = estimate if total is None else total + estimate
    return total / len(seeds)


@torch.no_grad()
def _first_step_expectation(model: LoadedModel, known: SliceBatch, seeds: list[int]) -> np.ndarray:
    """(S, N, G) decoded x0 estimates at the first sampling step, one per seed (one copy of the slice each)."""
    B = known.expression.shape[0]
    start = expression_noise(known.expression.shape, known.node_mask.cpu(),
                             [torch.Generator().manual_seed(s) for s in seeds]).to(known.expression.device)
    if known.given_genes is not None:  # imputation: the given genes are clean from the start
        given = (known.given_genes[:, model.network.expression_in.channel_genes] > 0)[:, None, :]
        start = torch.where(given, known.expression, start)
    T = model.schedule.steps
    t = torch.full((B,), T, dtype=torch.long, device=start.device)
    zeros = torch.zeros(B, dtype=torch.long, device=start.device)
    pred = model.network(start, known.positions, t, zeros, model.schedule.alpha_bar("expression")[t],
                         torch.ones(B, device=start.device), known.node_mask, known.gene_mask, known.dim_mask,
                         given_genes=known.given_genes, cell_labels=known.cell_labels, covariates=known.covariates)
    return model.codec.decode_expectation(pred.expression.float().cpu().numpy())


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


CONDITION_GUIDANCE_SCALE = 2.0  # STARmap pos_to_expr: 80% of cells typed as their condition (12% unconditionally)
# Cell types drawn for a joint sample: pushed at the middle noise levels only. Pushed at every level
# they typed the cells better but moved the expression distribution away from real cells (STARmap
# BZ14 energy distance 1.06 -> 1.23); at the middle levels composition, neighbourhood enrichment and
# Moran's I still improved with the energy distance no worse (README; benchmarks/conditions.py
# --joint-guidance). 3 rather than 2 there: on the three datasets with cell types the composition
# (STARmap BZ14 0.265-0.272 -> 0.247-0.260, osmFISH 0.93-0.94 -> 0.91, seqFISH 0.53 -> 0.51) and
# the neighbourhood enrichment improved, at some cost in expression realism (osmFISH energy distance
# 0.30-0.31 -> 0.35-0.37; README).
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
    about one patch's extent (STARmap 3D visual cortex, 8,400-cell slabs from 1,024-cell patches: x/y
    at 0.35 of the true extent, the thin z axis 8x too thick). Positions given (pos_to_expr, impute)
    are unaffected.
    """
    training = model.config.training
    if "position" not in GENERATED[mode] or training.data_mode != "cell" or n_cells <= 1.5 * training.cells_per_example:
        return None
    return (f"the model was trained on spatial patches of {training.cells_per_example} cells (training.data_mode: cell) and is "
            f"asked to lay out {n_cells} cells: generated positions keep about one patch's extent, not the tissue's. "
            f"Train with data_mode: slice (or cells_per_example >= {n_cells}) to generate whole slices")


def guided_draws(model: LoadedModel, batch: SliceBatch, data: SliceData, mode: str, num_samples: int, seed: int,
                 steps: int | None, sampler: str, progress: bool, request: GuidanceRequest | None, source: str,
                 posterior_mean_draws: int | None = None, expression_temperature: float | None = None,
                 ) -> tuple[Draws, dict, dict[str, np.ndarray], Draws | None]:
    """Draws with the request's conditions and target; (draws, uns entries, obs columns, the same
    seeds drawn without conditions or target when either was asked for)."""
    request = request or GuidanceRequest()
    drawn = drawn_cell_types(model, request, mode, len(data.cell_ids), seed)
    if drawn is not None:
        batch = apply_conditions(batch, model.conditions, drawn, "cell_type", request.slice_conditions, source)
    else:
        batch = apply_conditions(batch, model.conditions, data.cell_types, request.condition, request.slice_conditions, source)
    target = None
    if request.target:
        if "expression" not in GENERATED[mode]:
            raise InputError(f"--target steers generated expression: mode {mode} generates none")
        given = None if "position" in GENERATED[mode] else data.coords[:, : data.n_dims]
        target = parse_target(request.target, model.genes, model.codec, data.cell_ids, request.target_cells, given,
                              request.target_region)
    scale, interval = guidance_settings(request, drawn is not None)
    draws = draw_samples(model, batch, mode, num_samples, seed, steps, sampler, progress, scale, target, request.target_scale,
                         posterior_mean_draws, interval, expression_temperature)
    uns, obs = {}, {}
    caveat = patch_size_caveat(model, mode, len(data.cell_ids))
    if caveat:
        log.warning("%s: %s", data.slice_id, caveat)
        uns["caveat"] = caveat
    if drawn is not None:
        obs["cell_type_drawn"] = np.array(drawn, dtype=object)
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
    if request.condition or request.slice_conditions:
        uns["conditions"] = {"cell_type": request.condition or "", "slice_conditions": dict(request.slice_conditions),
                             "baseline_slice_conditions": own, "guidance_scale": scale}
        if batch.cell_labels is not None and request.condition:
            names = ["", *model.conditions.cell_types]
            obs["condition_cell_type"] = np.array([names[c] for c in batch.cell_labels[0, : len(data.cell_ids)].tolist()], dtype=object)
    if target is not None:
        genes = target.genes
        obs["target_objective"] = objective(draws.expression[0][:, genes], target, model.codec).astype(np.float32)
        obs["target_objective_unguided"] = objective(unguided.expression[0][:, genes], target, model.codec).astype(np.float32)
        if target.cells is not None:
            obs["targeted"] = target.cells
        uns["target"] = {"genes": [model.genes[g] for g in genes], "spec": target.labels, "levels": target.values.tolist(),
                         "weights": target.weights.tolist(), "scale": request.target_scale, "region": request.target_region or "",
                         "unguided_mean": unguided.expression[0][:, genes].mean(0).tolist(),
                         "n_targeted_cells": int(len(data.cell_ids) if target.cells is None else target.cells.sum())}
    return draws, uns, obs, unguided


def attach_guidance(adata: ad.AnnData, uns: dict, obs: dict[str, np.ndarray], unguided: ad.AnnData | None) -> None:
    """Conditions and targets of a guided sample: uns entries, per-cell columns, and the same seeds
    drawn without guidance (``layers['expr_pred_unguided']``, ``obsm['spatial_pred_unguided']``; with a
    slice condition, the slice's own value of the covariate, and ``layers['expr_pred_mean_unguided']``)."""
    adata.uns["alphastomics"].update(uns)
    for column, values in obs.items():
        adata.obs[column] = values
    if unguided is not None:
        adata.layers["expr_pred_unguided"] = unguided.layers["expr_pred"]
        adata.obsm["spatial_pred_unguided"] = unguided.obsm["spatial_pred"]
        if uns.get("conditions", {}).get("slice_conditions") and "expr_pred_mean" in unguided.layers:
            adata.layers["expr_pred_mean_unguided"] = unguided.layers["expr_pred_mean"]


def atlas_context(model: LoadedModel, data_dir: str | Path, manifest: dict, data: SliceData, mode: str, max_cells: int,
                  seed: int) -> SliceData | None:
    """expr_to_pos in a shared frame: up to ``max_cells`` cells of the model's training slices, drawn
    at random (``seed``), to lay out beside ``data``; None where that does not apply.

    Alone, a held-out slice is placed by what its cells' expression says about absolute position,
    and the network mostly places cells relative to each other: BDTNP slab2, between two training
    slabs, lands partly over its neighbour (median error 68). Among training cells, which the
    network places near where they were, its cells fall closer to their place (50 for a draw, 35
    for the posterior mean), at some cost to the slice's own shape (see sampling.atlas_context_cells).
    Only the context cells' expression is used: their positions are generated and dropped.
    Training slices measured with another gene panel, in another dimensionality, or without cell
    types where the slice has them, are left out."""
    if mode != "expr_to_pos" or model.frame.kind != "shared" or max_cells <= 0:
        return None
    usable = []
    for slice_id in model.train_slices:
        if slice_id == data.slice_id or slice_id not in manifest["slices"]:
            continue
        other = load_slice(data_dir, slice_id, manifest)
        if (other.n_dims == data.n_dims and np.array_equal(other.gene_mask, data.gene_mask)
                and (other.cell_types is None) == (data.cell_types is None)):
            usable.append(other)
    if not usable:
        return None
    pool = stack_cells(data, usable)
    chosen = np.sort(np.random.default_rng(seed).permutation(len(pool.cell_ids))[:max_cells])
    return dataclasses.replace(
        pool, slice_id=",".join(o.slice_id for o in usable), cell_ids=pool.cell_ids[chosen], coords=pool.coords[chosen],
        expression=pool.expression[chosen], cell_types=None if pool.cell_types is None else pool.cell_types[chosen])


def stack_cells(data: SliceData, parts: list[SliceData]) -> SliceData:
    """``data`` (its id, panel, covariates) holding the cells of ``parts``, in order."""
    return dataclasses.replace(
        data, cell_ids=np.concatenate([p.cell_ids for p in parts]), coords=np.concatenate([p.coords for p in parts]),
        expression=np.concatenate([p.expression for p in parts]),
        cell_types=None if data.cell_types is None else np.concatenate([p.cell_types for p in parts]))


def first_cells(draws: Draws, n: int) -> Draws:
    return dataclasses.replace(
        draws, expression=draws.expression[:, :n], coordinates=draws.coordinates[:, :n], embedding=draws.embedding[:n],
        expected_expression=None if draws.expected_expression is None else draws.expected_expression[:n],
        consensus_positions=None if draws.consensus_positions is None else draws.consensus_positions[:n])


def sample_slice(checkpoint: str | Path, data_dir: str | Path, slice_id: str, mode: str, steps: int | None = None,
                 seed: int = 0, device: str = "cpu", dataset: str | None = None, num_samples: int | None = None,
                 progress: bool = True, sampler: str | None = None, holdout_fraction: float | None = None,
                 holdout_seed: int | None = None, guidance: GuidanceRequest | None = None,
                 posterior_mean_draws: int | None = None, atlas_context_cells: int | None = None,
                 expression_temperature: float | None = None) -> ad.AnnData:
    """One slice of a preprocessed dataset in one mode. ``impute``: the genes chosen by
    alphastomics.heldout (``holdout_fraction``, ``holdout_seed``; default the config's) are hidden
    and generated from the other genes and the coordinates. ``atlas_context_cells``: see
    :func:`atlas_context` (default: sampling.atlas_context_cells)."""
    if mode not in MODES:
        raise InputError(f"unknown mode '{mode}' (one of {', '.join(MODES)})")
    started = time.time()
    model = load_model(checkpoint, device)
    manifest = load_manifest(data_dir)
    if list(manifest["genes"]) != model.genes:
        raise InputError(f"{data_dir}: gene list differs from the one {checkpoint} was trained on ({len(manifest['genes'])} vs {len(model.genes)} genes)")
    if slice_id in model.train_slices:
        log.warning("slice %r was one of the model's training slices: its scores measure fit, not generalisation", slice_id)
    data = load_slice(data_dir, slice_id, manifest)
    heldout = None
    if mode == "impute":
        fraction = holdout_fraction if holdout_fraction is not None else model.config.sampling.holdout_fraction
        holdout_seed = holdout_seed if holdout_seed is not None else model.config.sampling.holdout_seed
        measured = [g for g, m in zip(data.genes, data.gene_mask) if m]
        chosen = set(heldout_genes(measured, fraction, holdout_seed))
        heldout = np.array([g in chosen for g in data.genes])
    max_context = model.config.sampling.atlas_context_cells if atlas_context_cells is None else atlas_context_cells
    context = atlas_context(model, data_dir, manifest, data, mode, max_context, seed)
    if context is None and max_context > 0 and mode == "expr_to_pos":
        log.warning("%s: no atlas context (it needs a shared frame and training slices of the same "
                    "panel and dimensionality in %s): laid out alone", slice_id, data_dir)
    placed = data if context is None else stack_cells(data, [data, context])  # the slice's cells first
    batch = known_batch(model, placed, mode, heldout)
    steps = model.sampling_steps(steps)
    num_samples = num_samples or model.config.sampling.draws(mode)
    sampler = sampler or model.config.sampling.sampler
    if expression_temperature is None:
        expression_temperature = model.config.sampling.expression_temperature
    draws, guidance_uns, guidance_obs, unguided = guided_draws(model, batch, placed, mode, num_samples, seed, steps, sampler,
                                                               progress, guidance, f"{data_dir}: slice {slice_id!r}",
                                                               posterior_mean_draws, expression_temperature)
    if context is not None:
        n = len(data.cell_ids)
        draws, unguided = first_cells(draws, n), unguided and first_cells(unguided, n)
        guidance_obs = {key: values[:n] for key, values in guidance_obs.items()}
        guidance_uns["atlas_context"] = {"slices": context.slice_id.split(","), "cells": len(context.cell_ids), "seed": seed}
        log.info("%s: laid out among %d cells of the training slices %s", slice_id, len(context.cell_ids), context.slice_id)
    adata = to_anndata(data, draws, mode, model.frame.kind, heldout)
    attach_guidance(adata, guidance_uns, guidance_obs, unguided and to_anndata(data, unguided, mode, model.frame.kind, heldout))
    if heldout is not None:
        adata.uns["alphastomics"].update({"holdout_fraction": fraction, "holdout_seed": holdout_seed, "n_heldout": int(heldout.sum())})
    adata.uns["alphastomics"].update(
        {
            "dataset": dataset or manifest.get("dataset", ""),
            "seeds": draws.seeds,
            "num_samples": num_samples,
            "posterior_mean_draws": draws.posterior_mean_draws,
            "sampler": sampler,
            "expression_temperature": expression_temperature,
            "steps": steps or model.schedule.steps,
            "checkpoint_sha256": model.sha256,
            "train_slices": list(model.train_slices),
            "trained_on_slice": slice_id in model.train_slices,
            "runtime_s": round(time.time() - started, 2),
        }
    )
    return adata


def known_batch(model: LoadedModel, data: SliceData, mode: str, heldout: np.ndarray | None = None) -> SliceBatch:
    """The model-space batch of one slice as sampling sees it, on the model's device; ``heldout``
    (G,) bool: imputation, the genes to generate (the other measured genes are given)."""
    batch = collate([make_example(data, model.codec, model.frame, conditions=model.conditions)])
    if batch.cell_labels is not None:  # unconditional unless conditions are asked for (apply_conditions)
        batch.cell_labels = torch.zeros_like(batch.cell_labels)
        batch.covariates = torch.zeros_like(batch.covariates)
    if heldout is not None:
        batch.given_genes = torch.from_numpy(data.gene_mask.astype(bool) & ~heldout).float()[None, :]
    return batch.to(model.device)


@torch.no_grad()
def cell_embedding(network, expression, positions, batch) -> np.ndarray:
    """Per-cell features of the final network layer for the finished sample (given and generated
    values, both shown as clean, t = 0): the AlphaSTomics embedding of each cell."""
    zeros = torch.zeros(expression.shape[0], dtype=torch.long, device=expression.device)
    ones = torch.ones(expression.shape[0], device=expression.device)
    pred = network(expression, positions, zeros, zeros, ones, ones, batch.node_mask, batch.gene_mask, batch.dim_mask,
                   cell_labels=batch.cell_labels, covariates=batch.covariates)
    return pred.embedding[0].float().cpu().numpy()


def position_uncertainty(coordinates: np.ndarray, n_dims: int, frame_kind: str) -> np.ndarray:
    """Per cell, the RMS distance of its S generated positions to their mean (after aligning the
    draws to each other in a per-slice frame, where orientation is arbitrary)."""
    d = coordinates[..., :n_dims].astype(np.float64)
    if frame_kind == "per_slice":
        d = procrustes_mean(d)[1]
    return np.sqrt(((d - d.mean(0)) ** 2).sum(-1).mean(0)).astype(np.float32)


def to_anndata(data: SliceData, draws: Draws, mode: str, frame_kind: str, heldout: np.ndarray | None = None,
               generated_genes: np.ndarray | None = None, has_coordinates: bool = True) -> ad.AnnData:
    """Lay out true and generated values as described in docs/FORMATS.md.

    ``heldout`` (G,) bool: impute, the genes generated (the other measured genes are given);
    ``generated_genes`` (G,) bool: the genes generated expression covers (default the slice's
    measured genes; a user's file without genes gets every gene the model knows);
    ``has_coordinates``: False for dissociated cells (no obsm['spatial'] then).
    """
    d = data.n_dims
    generated = GENERATED[mode]
    measured = data.gene_mask.astype(bool)
    covered = (measured if generated_genes is None else generated_genes).astype(np.float32)
    obs = pd.DataFrame(
        {"slice_id": data.slice_id, "platform": data.platform},
        index=pd.Index(data.cell_ids.astype(str), name="cell_id"),
    )
    if data.cell_types is not None:
        # Unknown stays unknown: missing values, never the string "None".
        labels = pd.Series(data.cell_types, dtype=object).where(pd.notna(pd.Series(data.cell_types, dtype=object)), None)
        obs["cell_type"] = pd.Categorical(labels.to_numpy(), categories=sorted({str(v) for v in labels if v is not None}))
    var = pd.DataFrame({"measured": measured}, index=pd.Index(data.genes, name="gene"))
    adata = ad.AnnData(X=data.expression.astype(np.float32), obs=obs, var=var)
    if heldout is not None:  # impute: measured genes given, held-out ones generated
        adata.var["heldout"] = heldout
        given = measured & ~heldout
        adata.layers["expr_pred"] = np.where(given, data.expression, draws.expression[0] * covered).astype(np.float32)
        adata.layers["expr_pred_mean"] = np.where(given, data.expression, draws.expected_expression * covered).astype(np.float32)
        adata.layers["expr_pred_var"] = np.where(given, 0.0, draws.expression.var(0) * covered).astype(np.float32)
    elif "expression" in generated:
        adata.layers["expr_pred"] = (draws.expression[0] * covered).astype(np.float32)
        if draws.expected_expression is not None:  # pos_to_expr: draws share the cells' positions
            adata.layers["expr_pred_mean"] = (draws.expected_expression * covered).astype(np.float32)
            adata.layers["expr_pred_var"] = (draws.expression.var(0) * covered).astype(np.float32)
    else:
        adata.layers["expr_pred"] = data.expression.astype(np.float32)
    if has_coordinates:
        adata.obsm["spatial"] = data.coords[:, :d].astype(np.float32)
    if "position" in generated:
        adata.obsm["spatial_pred"] = draws.coordinates[0][:, :d].astype(np.float32)
        if draws.consensus_positions is not None:
            adata.obsm[CONSENSUS_KEY] = draws.consensus_positions[:, :d].astype(np.float32)
        if mode == "expr_to_pos" and len(draws.seeds) > 1:
            adata.obs["position_uncertainty"] = position_uncertainty(draws.coordinates, d, frame_kind)
        if mode == "joint" and len(draws.seeds) > 1:
            # Each joint draw is a tissue of its own (no cell stands for a true cell, so there is
            # nothing to average): all are kept, and evaluate scores every one of them.
            adata.obsm[JOINT_POSITION_DRAWS_KEY] = draws.coordinates[:, :, :d].transpose(1, 0, 2).astype(np.float32)
            adata.obsm[JOINT_EXPRESSION_DRAWS_KEY] = (draws.expression * covered).transpose(1, 0, 2).astype(np.float32)
    else:
        adata.obsm["spatial_pred"] = data.coords[:, :d].astype(np.float32)
    adata.obsm["alphastomics_embedding"] = draws.embedding
    adata.uns["alphastomics"] = {
        "mode": mode,
        "method": "alphastomics",
        "slice_id": data.slice_id,
        "n_dims": d,
        "generated": generated,
        "coordinate_frame": frame_kind,
        "package_version": __version__,
    }
    return adata


def write_h5ad_atomic(adata: ad.AnnData, out: str | Path) -> None:
    # pandas 3 makes every string column a StringArray, which anndata writes only when allowed to
    # (files then need anndata >= 0.11 to read).
    with atomic_output(out) as temp, ad.settings.override(allow_write_nullable_strings=True):
        adata.write_h5ad(temp)


def sample_user_data(model: LoadedModel, user: UserData, mode: str, steps: int | None, seed: int, num_samples: int,
                     sampler: str, impute_genes: list[str] | None = None, holdout_fraction: float | None = None,
                     holdout_seed: int = 0, progress: bool = True, guidance: GuidanceRequest | None = None,
                     posterior_mean_draws: int | None = None, expression_temperature: float | None = None) -> ad.AnnData:
    """Sample every slice of a user's file (alphastomics.user_data) in one mode; one AnnData.

    Generated expression covers every gene the model knows (measured in training). ``impute``:
    ``impute_genes`` (default: the genes the model knows and the file lacks) are generated while
    the file's other genes and its coordinates stay fixed; ``holdout_fraction`` instead hides a
    seeded fraction of the file's measured genes and keeps their truth, so evaluate can score them.
    """
    if expression_temperature is None:
        expression_temperature = model.config.sampling.expression_temperature
    needs = {"expr_to_pos": ["expression"], "pos_to_expr": ["coordinates"], "impute": ["expression", "coordinates"], "joint": []}[mode]
    source = user.report.get("source", "the input")
    if "expression" in needs and not user.has_expression:
        raise InputError(f"{source}: mode {mode} needs expression, and the file holds no gene the model knows")
    if "coordinates" in needs and not user.has_coordinates:
        raise InputError(f"{source}: mode {mode} needs coordinates, and the file has none (give --position-key, or --coordinates FILE)")
    known_genes = model.measured_genes
    parts = []
    for data in user.slices:
        heldout = None
        generated_genes = known_genes if "expression" in GENERATED[mode] else None
        model_view = data
        if mode == "impute":
            heldout = impute_target(data, model, impute_genes, holdout_fraction, holdout_seed, source)
        if generated_genes is not None:
            # the model generates every gene it knows; given genes (impute) stay the file's values
            model_view = dataclasses.replace(data, gene_mask=known_genes | data.gene_mask.astype(bool))
        batch = known_batch(model, model_view, mode, heldout)
        draws, guidance_uns, guidance_obs, unguided = guided_draws(model, batch, data, mode, num_samples, seed, steps, sampler,
                                                                   progress, guidance, source, posterior_mean_draws,
                                                                   expression_temperature)
        adata = to_anndata(data, draws, mode, model.frame.kind, heldout, generated_genes, user.has_coordinates)
        attach_guidance(adata, guidance_uns, guidance_obs, unguided and to_anndata(
            data, unguided, mode, model.frame.kind, heldout, generated_genes, user.has_coordinates))
        if heldout is not None:
            adata.var["generated"] = heldout
        parts.append(adata)
    adata = parts[0] if len(parts) == 1 else ad.concat(parts, merge="same", uns_merge="first")
    adata.uns["alphastomics"] = {**parts[0].uns["alphastomics"], "slice_id": ", ".join(d.slice_id for d in user.slices),
                                 "input": _plain_report(user.report), "seeds": draws.seeds, "num_samples": num_samples,
                                 "posterior_mean_draws": draws.posterior_mean_draws, "sampler": sampler,
                                 "expression_temperature": expression_temperature}
    return adata


def impute_target(data: SliceData, model: LoadedModel, impute_genes: list[str] | None, holdout_fraction: float | None,
                  holdout_seed: int, source: str) -> np.ndarray:
    """(G,) bool: the genes to generate in an imputation of a user's slice."""
    measured = data.gene_mask.astype(bool)
    if holdout_fraction is not None:
        chosen = set(heldout_genes([g for g, m in zip(data.genes, measured) if m], holdout_fraction, holdout_seed))
        return np.array([g in chosen for g in data.genes])
    if impute_genes:
        position = {g: i for i, g in enumerate(data.genes)}
        lower = {g.lower(): i for i, g in enumerate(data.genes)}
        unknown = [g for g in impute_genes if g not in position and g.lower() not in lower]
        if unknown:
            raise InputError(f"{source}: --impute-genes names gene(s) the model does not know: {', '.join(unknown)}")
        target = np.zeros(len(data.genes), dtype=bool)
        for g in impute_genes:
            target[position.get(g, lower.get(g.lower()))] = True
        return target
    target = model.measured_genes & ~measured
    if not target.any():
        raise InputError(f"{source}: the file measures every gene the model knows: name genes with --impute-genes, "
                         "or hide some with --holdout-genes FRACTION")
    return target


def _plain_report(report: dict) -> dict:
    """uns-safe copy: lists of strings stay lists, nothing empty (h5py cannot store empty lists of str)."""
    return {k: v for k, v in report.items() if not (isinstance(v, list) and not v)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="model file written by `alphastomics train`/`export` (model.ckpt)")
    p.add_argument("--data", default=None,
                   help="a preprocessed dataset directory (manifest.json + shards; give --slice) or any .h5ad: cells with "
                        "expression and/or coordinates, matched to the model's genes")
    p.add_argument("--slice", default=None, dest="slice_id", help="slice id to sample (preprocessed directory)")
    p.add_argument("--mode", required=True, choices=MODES)
    p.add_argument("--out", required=True, help="output .h5ad")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: sampling.steps of the model's training config, 50 unless set there; 0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first draw (draw i uses seed + i)")
    p.add_argument("--holdout-genes", type=float, default=None, metavar="FRACTION", dest="holdout_fraction",
                   help="impute: hide this fraction of the measured genes, generate them and keep their truth (default on a "
                        "preprocessed dataset: sampling.holdout_fraction)")
    p.add_argument("--holdout-seed", type=int, default=None, help="impute: seed of the held-out gene choice (default: sampling.holdout_seed)")
    p.add_argument("--impute-genes", default=None, metavar="GENE,GENE",
                   help="impute on an h5ad: the genes to generate (default: every gene the model knows and the file lacks)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="draws per slice (default: the training config's sampling.num_samples, for joint "
                        "sampling.joint_num_samples); joint keeps every draw (obsm['spatial_pred_draws'], "
                        "obsm['expr_pred_draws']), the other modes the first draw and summaries over the draws")
    p.add_argument("--posterior-mean-draws", type=int, default=None,
                   help="pos_to_expr, impute: starting noises averaged for layers['expr_pred_mean'], one network pass each "
                        "(default: sampling.posterior_mean_draws, 32)")
    p.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="ancestral (stochastic) or ddim (deterministic, good with few --steps); default: sampling.sampler")
    p.add_argument("--expression-temperature", type=float, default=None, metavar="T",
                   help="ancestral sampler: scale of the noise each step adds to generated expression (1: the model's own "
                        "distribution, < 1 sharper; coordinates always get the full noise); default: sampling.expression_temperature")
    p.add_argument("--dataset", default=None, help="dataset name recorded in the output")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    own = p.add_argument_group("own data (--data FILE.h5ad, --coordinates FILE, or joint with --num-cells)")
    own.add_argument("--slice-key", default=None, help="obs key: sample each slice of the file on its own (default: all cells one slice)")
    own.add_argument("--position-key", default="spatial", help="obsm key of the coordinates (default: spatial)")
    own.add_argument("--cell-type-key", default=None, help="obs key of cell types, kept in the output")
    own.add_argument("--normalization", choices=USER_NORMALIZATIONS, default="checkpoint",
                     help="how to normalise the file (default: as the model's training data were)")
    own.add_argument("--dims", type=int, choices=(2, 3), default=None,
                     help="dimensionality of generated coordinates for cells without any (default: the training data's)")
    own.add_argument("--coordinates", default=None, metavar="FILE", help="pos_to_expr: a CSV/TSV of x, y[, z] to fill with expression")
    own.add_argument("--num-cells", type=int, default=None, help="joint without --data: cells of the virtual slice")
    guide = p.add_argument_group("conditions and targets (models trained with conditions; alphastomics.guidance)")
    guide.add_argument("--condition", default=None, metavar="cell_type[=NAME]",
                       help="condition every cell on its own type (from the data) or on one type")
    guide.add_argument("--slice-condition", action="append", default=None, metavar="KEY=VALUE",
                       help="a per-slice covariate the model was trained with (repeatable)")
    guide.add_argument("--guidance-scale", type=float, default=None,
                       help="classifier-free guidance of expression: 0 unconditional, 1 conditional, > 1 stronger (positions "
                            "stop at 1). Default 2 for --condition / --slice-condition (on STARmap pos_to_expr, 80%% of cells "
                            "typed as their condition, 12%% unconditionally), for the cell types a joint sample draws 3 "
                            "at the middle noise levels only (0.2-0.7 of the steps; a scale given here applies at every level)")
    guide.add_argument("--target", default=None, metavar="GENE:high|low|LEVEL,... or TSV",
                       help="expression levels to steer generated cells towards (gradient guidance)")
    guide.add_argument("--target-scale", type=float, default=1.0, help="step of the target guidance (default 1)")
    guide.add_argument("--target-cells", default=None, metavar="FILE", help="cell ids (one per line) the target applies to")
    guide.add_argument("--target-region", default=None, metavar="X0:X1,Y0:Y1[,Z0:Z1]",
                       help="the target applies to the cells in this box of the slice's coordinates (its own units; an empty "
                            "bound is open); pos_to_expr and impute")
    p.add_argument("--atlas-context-cells", type=int, default=None, metavar="N",
                   help="expr_to_pos in a shared frame, on a dataset directory: lay the slice out among up to N cells of the "
                        "training slices (their expression only), then drop them; 0: alone (default: sampling.atlas_context_cells)")
    guide.add_argument("--joint-cell-types", choices=JOINT_CELL_TYPES, default=None,
                       help="joint on a model conditioned on cell type: give the cells the training composition (which "
                            "cell gets which type drawn) and generate the tissue given them (training), or sample "
                            "unconditionally (none); "
                            "default: sampling.joint_cell_types (training)")


def main(args: argparse.Namespace) -> int:
    started = time.time()
    if args.expression_temperature is not None:
        check_expression_temperature(args.expression_temperature, "--expression-temperature")
    guidance = GuidanceRequest(condition=args.condition, slice_conditions=parse_slice_conditions(args.slice_condition),
                               scale=args.guidance_scale, target=args.target, target_scale=args.target_scale,
                               target_cells=args.target_cells, target_region=args.target_region,
                               joint_cell_types=args.joint_cell_types)
    if args.data is not None and Path(args.data).is_dir():
        if args.slice_id is None:
            raise InputError(f"{args.data}: a preprocessed dataset directory: name the slice with --slice")
        adata = sample_slice(args.checkpoint, args.data, args.slice_id, args.mode, args.steps, args.seed, args.device,
                             args.dataset, args.num_samples, sampler=args.sampler, holdout_fraction=args.holdout_fraction,
                             holdout_seed=args.holdout_seed, guidance=guidance, posterior_mean_draws=args.posterior_mean_draws,
                             atlas_context_cells=args.atlas_context_cells, expression_temperature=args.expression_temperature)
    else:
        model = load_model(args.checkpoint, args.device)
        dims = args.dims or model.frame.dims
        if args.coordinates is not None:
            user = coordinates_as_slice(args.coordinates, model.genes)
        elif args.data is not None:
            user = read_user_h5ad(args.data, model.genes, model.training_normalization, args.normalization, args.slice_key,
                                  args.position_key, args.cell_type_key, dims)
        elif args.mode == "joint" and args.num_cells:
            user = empty_slice(args.num_cells, model.genes, dims)
        else:
            raise InputError("give --data (a dataset directory or an .h5ad), --coordinates FILE (pos_to_expr), "
                             "or --num-cells N (joint)")
        impute = [g.strip() for g in args.impute_genes.split(",") if g.strip()] if args.impute_genes else None
        adata = sample_user_data(model, user, args.mode, model.sampling_steps(args.steps), args.seed,
                                 args.num_samples or model.config.sampling.draws(args.mode), args.sampler or model.config.sampling.sampler,
                                 impute, args.holdout_fraction, args.holdout_seed or 0, guidance=guidance,
                                 posterior_mean_draws=args.posterior_mean_draws, expression_temperature=args.expression_temperature)
        adata.uns["alphastomics"].update({"dataset": args.dataset or "", "checkpoint_sha256": model.sha256,
                                          "train_slices": list(model.train_slices), "runtime_s": round(time.time() - started, 2)})
    write_h5ad_atomic(adata, args.out)
    log.info("wrote %s (%d cells, mode %s, %.1f s)", args.out, adata.n_obs, args.mode, adata.uns["alphastomics"]["runtime_s"])
    return 0
