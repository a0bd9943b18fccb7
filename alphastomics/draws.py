"""The model's draws of one slice and what is estimated from them: posterior means of expression
and positions, the expression level calibration, the cells' embedding and positional spread.

Plain functions of a loaded model (alphastomics.checkpoint) and a batch; ``alphastomics.sample``
turns them into sample files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from alphastomics import GENERATED_BY_MODE
from alphastomics.data.batch import SliceBatch
from alphastomics.data.places import Place, resolve_place
from alphastomics.data.slices import collate, make_example
from alphastomics.diffusion.sampler import FULL_INTERVAL, sample
from alphastomics.diffusion.schedule import expression_noise, position_noise
from alphastomics.errors import InputError
from alphastomics.guidance import Target, gradient_guidance
from alphastomics.io.shards import SliceData, load_slice
from alphastomics.expression_graph import SMOOTHED, ExpressionGraph, neighbour_graph, smooth
from alphastomics.layout import consensus_layout, matched_spread, procrustes_mean, spaced_apart, typical_spacing
from alphastomics.model.network import DenoiserInput, denoise

if TYPE_CHECKING:  # the model file's loader (export calibrates with this module: no import back at run time)
    from alphastomics.checkpoint import LoadedModel


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
    cell_spacing: float = 0.0  # joint: source units each draw's cells were spaced apart at (0: as drawn)


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
        model.network, model.schedule, known, "expression" in GENERATED_BY_MODE[mode], "position" in GENERATED_BY_MODE[mode],
        centred_positions=model.frame.kind == "per_slice", steps=steps, generator=generators, progress=progress,
        sampler=sampler, guidance_scale=guidance_scale, guidance_interval=guidance_interval, expression_guidance=guide,
        expression_temperature=expression_temperature,
    )
    embedding = cell_embedding(model.network, expression[:1], positions[:1], batch)
    n = int(batch.node_mask[0].sum())
    n_dims = 3 if bool(batch.dim_mask[0, 2]) else 2
    decoded = model.codec.decode(expression[:, :n].cpu().numpy())
    coordinates = np.stack([to_source(model, batch, p[:n].cpu().numpy(), n_dims) for p in positions])
    spacing = model.frame.cell_spacing if mode == "joint" else 0.0
    if spacing > 0:
        # A draw piles cells the sampler could not tell apart onto one another, clumps and holes
        # where tissue has cells about a cell's width apart; each generated tissue is spaced as the
        # training sections' cells are (docs/findings/model.md).
        for draw in coordinates:
            draw[:, :n_dims] = spaced_apart(draw[:, :n_dims].astype(np.float64), spacing)
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
            posterior_mean = to_source(model, batch, expected_positions(model, batch, [seed + i for i in range(k)],
                                                                        chunk=num_samples)[:n], n_dims)[:, :n_dims]
        consensus = consensus_layout(coordinates[:, :, :n_dims].astype(np.float64), posterior_mean)
    return Draws(decoded, coordinates, embedding[:n], seeds, expected, k, consensus, spacing)


def to_source(model: LoadedModel, batch: SliceBatch, positions: np.ndarray, n_dims: int) -> np.ndarray:
    """Model-frame positions of the (first) slice of ``batch`` in source units, at its place where sections have one."""
    place = None if batch.places is None else model.frame.place_from_features(batch.places[0].cpu().numpy())
    return model.frame.to_source(positions, n_dims, place)


def default_expression_graph(model: LoadedModel, mode: str) -> ExpressionGraph:
    settings = model.config.sampling
    return ExpressionGraph(settings.expression_graph_neighbours, settings.expression_graph_components,
                           settings.smoothing_steps(mode), settings.expression_graph_pool)


def refined_estimates(draws: Draws, expression: np.ndarray, batch: SliceBatch, mode: str, settings: ExpressionGraph) -> Draws:
    """``draws`` with their per-cell estimates (expr_to_pos: the consensus layout; impute: the
    posterior mean of the generated genes) smoothed over the graph of the cells' neighbours in
    their given expression (``expression`` (N, G): the cells' values in source units, of which
    the genes ``batch`` gives are used), and the consensus layout given the draws' spread and
    spacing: smoothing pulls cells together, and the layout's size and cell spacing are the draws'
    (alphastomics.layout.matched_spread, spaced_apart)."""
    if mode not in SMOOTHED:
        return draws
    consensus, expected = draws.consensus_positions, draws.expected_expression
    if settings.steps > 0:
        given = (batch.gene_mask[0] if batch.given_genes is None else batch.given_genes[0]).cpu().numpy() > 0
        graph = neighbour_graph(expression[:, given], settings.neighbours, settings.components, within=consensus,
                                pool=settings.pool)
        if consensus is not None:
            consensus = matched_spread(smooth(consensus, graph, settings.steps), consensus[None])
        if expected is not None:
            expected = expected.copy()
            expected[:, ~given] = smooth(expected[:, ~given], graph, settings.steps)
    if consensus is not None:
        d = consensus.shape[1]
        consensus = spaced_apart(consensus, typical_spacing(draws.coordinates[:, :, :d].astype(np.float64)))
    return dataclasses.replace(draws, consensus_positions=consensus, expected_expression=expected)


@torch.no_grad()
def expected_expression(model: LoadedModel, batch: SliceBatch, seeds: list[int], chunk: int = 8) -> np.ndarray:
    """Posterior mean of expression at the given coordinates, from the same S draws.

    The plain average of S sampled expression matrices carries their sampling noise (the spread
    of single cells, about the whole variance of a gene when position says little about it), so
    with a few draws it scores worse than no model at all. Each draw's outcome is a function of
    its starting noise x_T, and the denoiser's x0 estimate at the first step is E[x0 | x_T, given
    values], the expected outcome of that draw: averaging those over the draws (Rao-Blackwell)
    estimates the same posterior mean without the sampling noise. Decoded as P(expressed) times
    the expected magnitude (docs/findings/sampling.md). ``batch`` holds the one slice; the starting noises are evaluated ``chunk``
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
    score a worse MSE than predicting the training mean. The factor corrects the level only:
    correlations over cells are unchanged (docs/findings/sampling.md). Computed by ``alphastomics export --data`` on up to
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
    is: it ranks distances and keeps neighbourhoods better than any one draw, but pulls cells
    whose place the model is unsure of towards the middle, so the tissue's extent along such
    axes shrinks: the consensus layout
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
        state = DenoiserInput(known.expression, start, zeros, torch.full((B,), T, dtype=torch.long, device=start.device),
                              torch.ones(B, device=start.device), ab * torch.ones(B, device=start.device))
        pred = denoise(model.network, state, known)
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
    state = DenoiserInput(start, known.positions, t, zeros, model.schedule.alpha_bar("expression")[t], torch.ones(B, device=start.device))
    pred = denoise(model.network, state, known)
    return model.codec.decode_expectation(pred.expression.float().cpu().numpy())


def section_place(model: LoadedModel, data: SliceData, mode: str, requested: Place | None, has_coordinates: bool,
                  what: str) -> tuple[Place | None, dict | None]:
    """The place a slice is sampled at, and its record (None, None for a model without places)."""
    if model.frame.places is None:
        if requested is not None:
            raise InputError(f"{what}: --section-at needs a model trained with sections' places (the dataset's section_axis)")
        return None, None
    return resolve_place(model.frame.places, data.expression, data.gene_mask, data.coords if has_coordinates else None,
                         mode, requested, what)


def known_batch(model: LoadedModel, data: SliceData, mode: str, heldout: np.ndarray | None = None,
                place: Place | None = None) -> SliceBatch:
    """The model-space batch of one slice as sampling sees it, on the model's device; ``heldout``
    (G,) bool: imputation, the genes to generate (the other measured genes are given); ``place``:
    where the section lies along the cutting axis (default: its cells' extent; alphastomics.places).
    Where positions are given and the model has an atlas reference, each cell is shown the training
    atlas's expression near it (a training slice's own cells left out, as in training)."""
    prior = None
    if model.atlas_reference is not None and "position" not in GENERATED_BY_MODE[mode]:
        prior = model.atlas_reference.prior(data.coords, exclude=data.slice_id if data.slice_id in model.train_slices else None)
    batch = collate([make_example(data, model.codec, model.frame, conditions=model.conditions, place=place, atlas_prior=prior)])
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
    # every gene is clean at t = 0: none is marked given, in imputation as in the other modes
    pred = denoise(network, DenoiserInput(expression, positions, zeros, zeros, ones, ones),
                   dataclasses.replace(batch, given_genes=None))
    return pred.embedding[0].float().cpu().numpy()


def position_uncertainty(coordinates: np.ndarray, n_dims: int, frame_kind: str) -> np.ndarray:
    """Per cell, the RMS distance of its S generated positions to their mean (after aligning the
    draws to each other in a per-slice frame, where orientation is arbitrary)."""
    d = coordinates[..., :n_dims].astype(np.float64)
    if frame_kind == "per_slice":
        d = procrustes_mean(d)[1]
    return np.sqrt(((d - d.mean(0)) ** 2).sum(-1).mean(0)).astype(np.float32)


def first_cells(draws: Draws, n: int) -> Draws:
    return dataclasses.replace(
        draws, expression=draws.expression[:, :n], coordinates=draws.coordinates[:, :n], embedding=draws.embedding[:n],
        expected_expression=None if draws.expected_expression is None else draws.expected_expression[:n],
        consensus_positions=None if draws.consensus_positions is None else draws.consensus_positions[:n])
