"""Sampling one slice in one mode -> an h5ad with true and generated values side by side."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from alphastomics import GENERATED_BY_MODE, MODES
from alphastomics.checkpoint import LoadedModel, load_model
from alphastomics.config import JOINT_CELL_TYPES, check_expression_temperature
from alphastomics.data.places import Place, place_from_values
from alphastomics.diffusion.sampler import SAMPLERS
from alphastomics.draws import (  # noqa: F401 - the sampling API that scripts and tests import from here
    Draws,
    cell_embedding,
    default_expression_graph,
    draw_samples,
    expected_expression,
    expected_positions,
    first_cells,
    known_batch,
    position_uncertainty,
    section_place,
)
from alphastomics.errors import InputError
from alphastomics.expression_graph import SMOOTHED, ExpressionGraph
from alphastomics.guidance import parse_slice_conditions
from alphastomics.guided import GuidanceRequest, guided_draws
from alphastomics.heldout import heldout_genes
from alphastomics.user_data import NORMALIZATIONS as USER_NORMALIZATIONS
from alphastomics.user_data import UserData, coordinates_as_slice, empty_slice, read_user_h5ad
from alphastomics.io.manifest import load_manifest
from alphastomics.io.sample_file import GENERATED_GENES, INFO, attach_guidance, model_sample
from alphastomics.io.sample_file import write_sample as write_h5ad_atomic
from alphastomics.io.shards import SliceData, load_slice

log = logging.getLogger(__name__)


def atlas_context(model: LoadedModel, data_dir: str | Path, manifest: dict, data: SliceData, mode: str, max_cells: int,
                  seed: int) -> SliceData | None:
    """expr_to_pos in a shared frame: up to ``max_cells`` cells of the model's training slices, drawn
    at random (``seed``), to lay out beside ``data``; None where that does not apply.

    Alone, a held-out slice is placed by what its cells' expression says about absolute position,
    and the network mostly places cells relative to each other, so a slab between two training
    slabs can land partly over its neighbour. Among training cells, which the network places near
    where they were, its cells fall closer to their place, at some cost to the slice's own shape
    (see sampling.atlas_context_cells; docs/findings/sampling.md).
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


def sample_slice(checkpoint: str | Path, data_dir: str | Path, slice_id: str, mode: str, steps: int | None = None,
                 seed: int = 0, device: str = "cpu", dataset: str | None = None, num_samples: int | None = None,
                 progress: bool = True, sampler: str | None = None, holdout_fraction: float | None = None,
                 holdout_seed: int | None = None, guidance: GuidanceRequest | None = None,
                 posterior_mean_draws: int | None = None, atlas_context_cells: int | None = None,
                 expression_temperature: float | None = None, expression_graph: dict | None = None,
                 section_at: Place | None = None) -> ad.AnnData:
    """One slice of a preprocessed dataset in one mode. ``impute``: the genes chosen by
    alphastomics.heldout (``holdout_fraction``, ``holdout_seed``; default the config's) are hidden
    and generated from the other genes and the coordinates. ``atlas_context_cells``: see
    :func:`atlas_context` (default: sampling.atlas_context_cells). ``section_at``: a model whose
    sections carry a place samples the slice there (default: alphastomics.data.places.resolve_place)."""
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
    place, place_record = section_place(model, data, mode, section_at, True, f"{data_dir}: slice {slice_id!r}")
    max_context = model.config.sampling.atlas_context_cells if atlas_context_cells is None else atlas_context_cells
    if place is not None and max_context > 0:
        # every section is laid out in the frame of its own place: other sections' cells have other places
        log.warning("%s: atlas context is not used by a model whose sections carry their place", slice_id)
        max_context = 0
    context = atlas_context(model, data_dir, manifest, data, mode, max_context, seed)
    if context is None and max_context > 0 and mode == "expr_to_pos":
        log.warning("%s: no atlas context (it needs a shared frame and training slices of the same "
                    "panel and dimensionality in %s): laid out alone", slice_id, data_dir)
    placed = data if context is None else stack_cells(data, [data, context])  # the slice's cells first
    batch = known_batch(model, placed, mode, heldout, place)
    steps = model.sampling_steps(steps)
    num_samples = num_samples or model.config.sampling.draws(mode)
    sampler = sampler or model.config.sampling.sampler
    if expression_temperature is None:
        expression_temperature = model.config.sampling.expression_temperature
    expression_graph = dataclasses.replace(default_expression_graph(model, mode), **(expression_graph or {}))
    draws, guidance_uns, guidance_obs, unguided = guided_draws(model, batch, placed, mode, num_samples, seed, steps, sampler,
                                                               progress, guidance, f"{data_dir}: slice {slice_id!r}",
                                                               posterior_mean_draws, expression_temperature, expression_graph)
    if context is not None:
        n = len(data.cell_ids)
        draws, unguided = first_cells(draws, n), unguided and first_cells(unguided, n)
        guidance_obs = {key: values[:n] for key, values in guidance_obs.items()}
        guidance_uns["atlas_context"] = {"slices": context.slice_id.split(","), "cells": len(context.cell_ids), "seed": seed}
        log.info("%s: laid out among %d cells of the training slices %s", slice_id, len(context.cell_ids), context.slice_id)
    adata = to_anndata(data, draws, mode, model.frame.kind, heldout)
    attach_guidance(adata, guidance_uns, guidance_obs, unguided and to_anndata(data, unguided, mode, model.frame.kind, heldout))
    if heldout is not None:
        adata.uns[INFO].update({"holdout_fraction": fraction, "holdout_seed": holdout_seed, "n_heldout": int(heldout.sum())})
    if place_record is not None:
        adata.uns[INFO]["section_place"] = place_record
    adata.uns[INFO].update(
        {
            "dataset": dataset or manifest.get("dataset", ""),
            "seeds": draws.seeds,
            "num_samples": num_samples,
            "posterior_mean_draws": draws.posterior_mean_draws,
            "sampler": sampler,
            "expression_temperature": expression_temperature,
            **expression_graph_record(expression_graph, mode),
            "steps": steps or model.schedule.steps,
            "checkpoint_sha256": model.sha256,
            "train_slices": list(model.train_slices),
            "trained_on_slice": slice_id in model.train_slices,
            "runtime_s": round(time.time() - started, 2),
        }
    )
    return adata


def to_anndata(data: SliceData, draws: Draws, mode: str, frame_kind: str, heldout: np.ndarray | None = None,
               generated_genes: np.ndarray | None = None, has_coordinates: bool = True) -> ad.AnnData:
    """The sample file of ``draws`` (alphastomics.io.sample_file.model_sample); expr_to_pos with
    several draws also gets each cell's spread over them."""
    spread = None
    if mode == "expr_to_pos" and len(draws.seeds) > 1:
        spread = position_uncertainty(draws.coordinates, data.n_dims, frame_kind)
    return model_sample(data, draws, mode, frame_kind, heldout, generated_genes, has_coordinates, spread)


def sample_user_data(model: LoadedModel, user: UserData, mode: str, steps: int | None, seed: int, num_samples: int,
                     sampler: str, impute_genes: list[str] | None = None, holdout_fraction: float | None = None,
                     holdout_seed: int = 0, progress: bool = True, guidance: GuidanceRequest | None = None,
                     posterior_mean_draws: int | None = None, expression_temperature: float | None = None,
                     expression_graph: dict | None = None, section_at: Place | dict[str, Place] | None = None) -> ad.AnnData:
    """Sample every slice of a user's file (alphastomics.user_data) in one mode; one AnnData.
    ``section_at``: for a model whose sections carry a place, one place for every slice or one per
    slice id (alphastomics.data.places.resolve_place decides where none is given).

    Generated expression covers every gene the model knows (measured in training). ``impute``:
    ``impute_genes`` (default: the genes the model knows and the file lacks) are generated while
    the file's other genes and its coordinates stay fixed; ``holdout_fraction`` instead hides a
    seeded fraction of the file's measured genes and keeps their truth, so evaluate can score them.
    """
    if expression_temperature is None:
        expression_temperature = model.config.sampling.expression_temperature
    expression_graph = dataclasses.replace(default_expression_graph(model, mode), **(expression_graph or {}))
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
        generated_genes = known_genes if "expression" in GENERATED_BY_MODE[mode] else None
        model_view = data
        if mode == "impute":
            heldout = impute_target(data, model, impute_genes, holdout_fraction, holdout_seed, source)
        if generated_genes is not None:
            # the model generates every gene it knows; given genes (impute) stay the file's values
            model_view = dataclasses.replace(data, gene_mask=known_genes | data.gene_mask.astype(bool))
        requested = section_at.get(data.slice_id) if isinstance(section_at, dict) else section_at
        place, place_record = section_place(model, data, mode, requested, user.has_coordinates, f"{source}: slice {data.slice_id!r}")
        batch = known_batch(model, model_view, mode, heldout, place)
        draws, guidance_uns, guidance_obs, unguided = guided_draws(model, batch, data, mode, num_samples, seed, steps, sampler,
                                                                   progress, guidance, source, posterior_mean_draws,
                                                                   expression_temperature, expression_graph)
        adata = to_anndata(data, draws, mode, model.frame.kind, heldout, generated_genes, user.has_coordinates)
        attach_guidance(adata, guidance_uns, guidance_obs, unguided and to_anndata(
            data, unguided, mode, model.frame.kind, heldout, generated_genes, user.has_coordinates))
        if heldout is not None:
            adata.var[GENERATED_GENES] = heldout
        if place_record is not None:
            adata.uns[INFO]["section_place"] = place_record
        parts.append(adata)
    adata = parts[0] if len(parts) == 1 else ad.concat(parts, merge="same", uns_merge="first")
    adata.uns[INFO] = {**parts[0].uns[INFO], "slice_id": ", ".join(d.slice_id for d in user.slices),
                                 "input": _plain_report(user.report), "seeds": draws.seeds, "num_samples": num_samples,
                                 "posterior_mean_draws": draws.posterior_mean_draws, "sampler": sampler,
                                 "expression_temperature": expression_temperature,
                                 **expression_graph_record(expression_graph, mode)}
    return adata


def expression_graph_record(settings: ExpressionGraph, mode: str) -> dict:
    """The sample file's record of the smoothing over given expression, in the modes that have one."""
    return {"expression_graph": settings.record(mode)} if mode in SMOOTHED else {}


def expression_graph_overrides(args: argparse.Namespace) -> dict:
    """The graph settings given on the command line (the others come from the model's sampling settings)."""
    given = {"neighbours": args.graph_neighbours, "components": args.graph_components, "steps": args.smoothing_steps,
             "pool": args.graph_pool}
    return {key: value for key, value in given.items() if value is not None}


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
                            "stop at 1). Default 2 for --condition / --slice-condition (docs/conditions.md), for the cell types "
                            "a joint sample draws 3 "
                            "at the middle noise levels only (0.2-0.7 of the steps; a scale given here applies at every level)")
    guide.add_argument("--target", default=None, metavar="GENE:high|low|LEVEL,... or TSV",
                       help="expression levels to steer generated cells towards (gradient guidance)")
    guide.add_argument("--target-scale", type=float, default=1.0, help="step of the target guidance (default 1)")
    guide.add_argument("--target-cells", default=None, metavar="FILE", help="cell ids (one per line) the target applies to")
    guide.add_argument("--target-region", default=None, metavar="X0:X1,Y0:Y1[,Z0:Z1]",
                       help="the target applies to the cells in this box of the slice's coordinates (its own units; an empty "
                            "bound is open); pos_to_expr and impute")
    place = p.add_argument_group("sections' places (models trained with a section_axis; alphastomics.data.places)")
    place.add_argument("--section-at", default=None, metavar="VALUE or LOW:HIGH",
                       help="sample the section at this place along the cutting axis, in the atlas' units: a plane (VALUE) "
                            "or a slab (LOW:HIGH). Default: expr_to_pos estimates it from expression; the other modes take "
                            "the extent of the given coordinates; joint without coordinates needs it. A negative LOW goes with '=': "
                            "--section-at=-150:-110")
    place.add_argument("--section-at-key", default=None, metavar="OBS_KEY",
                       help="own h5ad: the obs column holding each slice's place (its range over the slice's cells)")
    p.add_argument("--atlas-context-cells", type=int, default=None, metavar="N",
                   help="expr_to_pos in a shared frame, on a dataset directory: lay the slice out among up to N cells of the "
                        "training slices (their expression only), then drop them; 0: alone (default: sampling.atlas_context_cells)")
    graph = p.add_argument_group("neighbours in given expression (expr_to_pos, impute; alphastomics.expression_graph)")
    graph.add_argument("--smoothing-steps", type=int, default=None, metavar="N",
                       help="rounds of smoothing the consensus layout (expr_to_pos) or the hidden genes' posterior mean "
                            "(impute) over the cells' nearest neighbours in their given expression; 0: off (default: "
                            "sampling.layout_smoothing_steps, sampling.impute_smoothing_steps)")
    graph.add_argument("--graph-neighbours", type=int, default=None, metavar="K",
                       help="neighbours per cell in that graph (default: sampling.expression_graph_neighbours)")
    graph.add_argument("--graph-components", type=int, default=None, metavar="N",
                       help="principal components of the standardised given genes behind it (default: "
                            "sampling.expression_graph_components)")
    graph.add_argument("--graph-pool", type=int, default=None, metavar="N",
                       help="expr_to_pos: a cell's neighbours in expression chosen among its N nearest cells of the "
                            "consensus layout; 0: anywhere in the slice (default: sampling.expression_graph_pool)")
    guide.add_argument("--joint-cell-types", choices=JOINT_CELL_TYPES, default=None,
                       help="joint on a model conditioned on cell type: give the cells the training composition (which "
                            "cell gets which type drawn) and generate the tissue given them (training), or sample "
                            "unconditionally (none); "
                            "default: sampling.joint_cell_types (training)")


def places_from_obs(path: str, key: str, user: UserData) -> dict[str, Place]:
    """Each slice's place from an obs column of the user's file: the range of its cells' values."""
    obs = ad.read_h5ad(path, backed="r").obs
    if key not in obs.columns:
        raise InputError(f"{path}: --section-at-key {key!r} is not an obs column (columns: {', '.join(map(str, obs.columns)) or 'none'})")
    try:
        values = obs[key].astype(float)
    except (TypeError, ValueError):
        raise InputError(f"{path}: obs[{key!r}] is not numeric: it cannot place a section along the cutting axis") from None
    values.index = values.index.astype(str)
    return {data.slice_id: place_from_values(values.reindex(data.cell_ids.astype(str)).to_numpy(),
                                             f"{path}: obs[{key!r}] of slice {data.slice_id!r}") for data in user.slices}


def main(args: argparse.Namespace) -> int:
    started = time.time()
    if args.expression_temperature is not None:
        check_expression_temperature(args.expression_temperature, "--expression-temperature")
    guidance = GuidanceRequest(condition=args.condition, slice_conditions=parse_slice_conditions(args.slice_condition),
                               scale=args.guidance_scale, target=args.target, target_scale=args.target_scale,
                               target_cells=args.target_cells, target_region=args.target_region,
                               joint_cell_types=args.joint_cell_types)
    for flag, value, least in (("--smoothing-steps", args.smoothing_steps, 0), ("--graph-neighbours", args.graph_neighbours, 1),
                               ("--graph-components", args.graph_components, 1), ("--graph-pool", args.graph_pool, 0)):
        if value is not None and value < least:
            raise InputError(f"{flag} must be at least {least}, not {value}")
    section_at = Place.parse(args.section_at) if args.section_at is not None else None
    if args.section_at_key is not None and (args.data is None or Path(args.data).is_dir() or section_at is not None):
        raise InputError("--section-at-key reads an obs column of an own .h5ad given with --data (and replaces --section-at)")
    if args.data is not None and Path(args.data).is_dir():
        if args.slice_id is None:
            raise InputError(f"{args.data}: a preprocessed dataset directory: name the slice with --slice")
        adata = sample_slice(args.checkpoint, args.data, args.slice_id, args.mode, args.steps, args.seed, args.device,
                             args.dataset, args.num_samples, sampler=args.sampler, holdout_fraction=args.holdout_fraction,
                             holdout_seed=args.holdout_seed, guidance=guidance, posterior_mean_draws=args.posterior_mean_draws,
                             atlas_context_cells=args.atlas_context_cells, expression_temperature=args.expression_temperature,
                             expression_graph=expression_graph_overrides(args), section_at=section_at)
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
        if args.section_at_key is not None:
            section_at = places_from_obs(args.data, args.section_at_key, user)
        impute = [g.strip() for g in args.impute_genes.split(",") if g.strip()] if args.impute_genes else None
        adata = sample_user_data(model, user, args.mode, model.sampling_steps(args.steps), args.seed,
                                 args.num_samples or model.config.sampling.draws(args.mode), args.sampler or model.config.sampling.sampler,
                                 impute, args.holdout_fraction, args.holdout_seed or 0, guidance=guidance,
                                 posterior_mean_draws=args.posterior_mean_draws, expression_temperature=args.expression_temperature,
                                 expression_graph=expression_graph_overrides(args), section_at=section_at)
        adata.uns[INFO].update({"dataset": args.dataset or "", "checkpoint_sha256": model.sha256,
                                          "train_slices": list(model.train_slices), "runtime_s": round(time.time() - started, 2)})
    write_h5ad_atomic(adata, args.out)
    log.info("wrote %s (%d cells, mode %s, %.1f s)", args.out, adata.n_obs, args.mode, adata.uns[INFO]["runtime_s"])
    return 0
