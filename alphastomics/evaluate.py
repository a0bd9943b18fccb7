"""``alphastomics evaluate`` (one sample file -> tidy metric table + JSON) and ``alphastomics gather``.

Which metrics a sample gets depends on what was generated (``uns['alphastomics']['generated']``)
and on whether generated cell i stands for true cell i (every mode but ``joint``):

- expression generated with correspondence (``pos_to_expr``): errors and correlations of the
  first draw (``layers['expr_pred']``) and of the posterior mean (``layers['expr_pred_mean']``,
  metrics ``expr_mean_*``), leiden clusters of generated expression and expression label transfer;
- expression generated (``pos_to_expr``, ``joint``): the data's distribution (fraction of
  near-zero values, per-gene spread);
- positions generated (``expr_to_pos``, ``joint``): extent ratios per principal axis and the
  distance-distribution distance (no correspondence needed); with correspondence (``expr_to_pos``)
  also Procrustes, RSSD, pairwise-distance metrics, kNN preservation, neighbourhood enrichment,
  spatial label transfer, and in a shared coordinate frame the unaligned position error;
- ``joint`` (no correspondence): distribution metrics against the test slice (energy distance,
  cell-type composition, neighbourhood enrichment with predicted types), beside the same figures
  for every real training slice (reference rows, alphastomics.references; needs ``--reference``);
- always: Moran's I of (true expression on the true-coordinate graph) vs (``layers['expr_pred']``
  on the ``obsm['spatial_pred']`` graph). By the sample format the generated side is, per mode:
  ``pos_to_expr`` generated expression on the given (= true) coordinates; ``expr_to_pos`` the true
  expression on the generated coordinates; ``joint`` generated expression on generated coordinates.

Metrics whose cost grows faster than n log n (pairwise distances, clustering, expression label
transfer) run on a random sample of ``sample_size`` cells (seed ``seed``) when a slice has more
than ``max_cells_exact`` cells; the JSON says which cells entered each metric.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from alphastomics import DOMAINS_MODE, references
from alphastomics.metrics import design
from alphastomics.config import EvaluationConfig, load_config
from alphastomics.errors import InputError
from alphastomics.io import sample_file
from alphastomics.io.metric_tables import TABLE_COLUMNS, read_metric_table, write_metrics, write_table
from alphastomics.io.sample_file import DEFAULT_METHOD, Sample, dense, read_sample, sample_from_anndata
from alphastomics.layout import CONSENSUS_PREFIX
from alphastomics.metrics import clusters, distribution, expression, geometry, neighbourhoods, spatial

log = logging.getLogger(__name__)

# Label permutations behind the neighbourhood enrichment z-scores (squidpy's default is 1000; 100
# keeps a 100,000-cell slice within budget and the z-scores stable to ~0.1).
ENRICHMENT_PERMUTATIONS = 100
# Neighbours that vote in kNN label transfer, spatial and expression.
LABEL_TRANSFER_K = 15
# Random pairs whose distances enter the distance-distribution distance.
SHAPE_PAIRS = 20000
# Principal components of training expression in which generated and real cells are compared.
DISTRIBUTION_PCS = 30
# Cells per set in the energy distance (O(n^2) pairs).
ENERGY_MAX_CELLS = 2000
# When a sample file carries the model's per-cell embedding (obsm['alphastomics_embedding']), its
# leiden clusters are scored like those of generated expression.
EMBEDDING_KEY = sample_file.EMBEDDING


# ----------------------------------------------------------------------------------------------
# evaluation


def sample_cells(n: int, config: EvaluationConfig) -> np.ndarray | None:
    """Sorted random sample of ``config.sample_size`` cell indices when n > ``max_cells_exact``, else None (all cells)."""
    if n <= config.max_cells_exact:
        return None
    rng = np.random.default_rng(config.seed)
    return np.sort(rng.choice(n, size=min(config.sample_size, n), replace=False))


def _cells_note(n: int, chosen: np.ndarray | None, config: EvaluationConfig) -> dict:
    if chosen is None:
        return {"cells": "all", "n_cells_total": n}
    return {"cells": f"random sample without replacement (slice has more than max_cells_exact={config.max_cells_exact} cells)",
            "n_cells_total": n, "sample_size": int(len(chosen)), "seed": config.seed}


class _Collector:
    """Metric values and how each was computed, in the order they were added."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.how: dict[str, dict] = {}

    def add(self, values: dict[str, float], how: dict[str, dict], seconds: float, **extra) -> None:
        for name, value in values.items():
            self.values[name] = float(value)
            self.how[name] = {**how.get(name, {}), **extra, "seconds": round(seconds, 3)}


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def _expression_family(sample: Sample, out: _Collector) -> None:
    """Cell-by-cell errors and correlations of the first draw and, where present, of the posterior mean."""
    (values, how), seconds = _timed(expression.expression_metrics, sample.true_expression, sample.generated_expression)
    out.add(values, how, seconds, measured_genes=sample.measured_note, layer=f"{sample_file.EXPR_PRED} (first draw)")
    if sample.mean_expression is not None:
        (values, how), seconds = _timed(expression.expression_metrics, sample.true_expression, sample.mean_expression)
        out.add({f"expr_mean_{k[5:]}": v for k, v in values.items()}, {f"expr_mean_{k[5:]}": v for k, v in how.items()},
                seconds, measured_genes=sample.measured_note, layer=f"{sample_file.EXPR_PRED_MEAN} (mean over draws)")


def _expression_distribution_family(true: np.ndarray, generated: np.ndarray, out: _Collector, note: str) -> None:
    """Does generated expression have the data's distribution: zeros where the data has zeros, per-gene spread."""
    start = time.perf_counter()
    zero_true, zero_generated = distribution.zero_fraction(true), distribution.zero_fraction(generated)
    values = {
        "expr_zero_fraction_abs_diff": abs(zero_generated - zero_true),
        "expr_std_ratio_median": distribution.std_ratio_median(true, generated),
        "expr_negative_fraction": float(np.mean(generated < 0)),
    }
    how = {
        "expr_zero_fraction_abs_diff": {"formula": f"|fraction of generated values < {distribution.NEAR_ZERO} - the same for true values|",
                                        "generated_fraction": zero_generated, "true_fraction": zero_true},
        "expr_std_ratio_median": {"formula": "median over genes of std(generated) / std(true), genes constant in the truth left out"},
        "expr_negative_fraction": {"formula": "fraction of generated values below 0 (off the scale of normalised expression)"},
    }
    out.add(values, how, time.perf_counter() - start, layer=note)


def _shape_family(sample: Sample, config: EvaluationConfig, out: _Collector) -> None:
    (values, how), seconds = _timed(geometry.shape_metrics, sample.true_positions, sample.generated_positions,
                                    SHAPE_PAIRS, config.seed)
    out.add(values, how, seconds, cells="all")
    if sample.coordinate_frame == "shared" and sample.paired:
        error = np.linalg.norm(sample.true_positions - sample.generated_positions, axis=1)
        out.add({"position_error_median": float(np.median(error))}, {"position_error_median": {
            "formula": "median over cells of |generated - true position|, no alignment (shared coordinate frame)",
            "units": "source units"}}, 0.0, cells="all")


def _placement_family(sample: Sample, out: _Collector) -> None:
    """Sections with a place (alphastomics.data.places): generated where the true section lies, and
    for a place estimated from expression, how far its centre was from the true one."""
    record = sample.section_place
    if record is None or "axis" not in record:
        return
    axis = "xyz".index(str(record["axis"]))
    if axis >= sample.true_positions.shape[1]:
        return
    (values, how), seconds = _timed(geometry.placement_metrics, sample.true_positions, sample.generated_positions, axis)
    if record.get("centre_error") is not None:
        values["place_centre_error_abs"] = abs(float(record["centre_error"]))
        how["place_centre_error_abs"] = {
            "formula": "|centre of the place estimated from expression - centre of the true section's extent| along the axis",
            "units": "source units", "true_thickness": float(record["true_high"]) - float(record["true_low"])}
    out.add(values, how, seconds, cells="all", place_source=str(record.get("source", "")))


def _position_family(sample: Sample, config: EvaluationConfig, out: _Collector) -> None:
    true, generated = sample.true_positions, sample.generated_positions
    (values, how), seconds = _timed(geometry.coordinate_metrics, true, generated)
    out.add(values, how, seconds, cells="all")

    chosen = sample_cells(len(true), config)
    subset = slice(None) if chosen is None else chosen
    (values, how, _), seconds = _timed(geometry.distance_metrics, true[subset], generated[subset], list(config.contact_quantiles))
    out.add(values, how, seconds, **_cells_note(len(true), chosen, config))

    (values, how), seconds = _timed(neighbourhoods.knn_preservation, true, generated, list(config.knn_k))
    out.add(values, how, seconds, cells="all")


def _consensus_family(sample: Sample, config: EvaluationConfig, out: _Collector) -> None:
    """The consensus layout of expr_to_pos (obsm['spatial_pred_consensus']) scored as the first draw is."""
    consensus = dataclasses.replace(sample, generated_positions=sample.consensus_positions)
    part = _Collector()
    _shape_family(consensus, config, part)
    _position_family(consensus, config, part)
    for name, value in part.values.items():
        out.values[CONSENSUS_PREFIX + name] = value
        out.how[CONSENSUS_PREFIX + name] = {**part.how[name], "layer": f"obsm['{sample_file.SPATIAL_PRED_CONSENSUS}'] (consensus layout of the draws)"}


def _morans_family(sample: Sample, config: EvaluationConfig, out: _Collector) -> None:
    same_positions = "position" not in sample.generated
    generated_points = sample.true_positions if same_positions else sample.generated_positions
    if "expression" in sample.generated:
        note = ("true expression on the true-coordinate graph vs generated expression on "
                + ("the same graph (coordinates were given)" if same_positions else "the generated-coordinate graph"))
    else:
        note = "true expression on the true-coordinate graph vs the same true expression on the generated-coordinate graph"
    (values, how, per_gene), seconds = _timed(
        spatial.morans_i_agreement, sample.true_positions, sample.true_expression,
        generated_points, sample.generated_expression, config.morans_k, note,
    )
    out.add(values, how, seconds, cells="all")
    out.how["morans_i_corr"]["per_gene"] = {
        "genes": sample.genes, "true": per_gene["true"].tolist(), "generated": per_gene["generated"].tolist(),
    }


def _known_types(sample: Sample) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """(mask of cells with a known type, integer codes of those cells, type names) or None when < 2 types."""
    if sample.cell_types is None:
        return None
    known = np.array([label is not None for label in sample.cell_types])
    names, codes = np.unique(sample.cell_types[known].astype(str), return_inverse=True)
    if len(names) < 2 or known.sum() < 3:
        return None
    return known, codes, [str(n) for n in names]


def _typed_note(known: np.ndarray, names: list[str]) -> dict:
    return {"cell_types": f"obs['cell_type'], {len(names)} types, cells of unknown type left out", "n_cells_typed": int(known.sum())}


def _cell_type_position_family(sample: Sample, config: EvaluationConfig, known, codes, names, out: _Collector) -> None:
    true, generated = sample.true_positions[known], sample.generated_positions[known]
    typed = _typed_note(known, names)
    (values, how, z), seconds = _timed(
        neighbourhoods.nhood_enrichment_agreement, true, generated, codes, config.morans_k, ENRICHMENT_PERMUTATIONS, config.seed)
    out.add(values, how, seconds, **typed)
    out.how["nhood_enrichment_corr"]["zscores"] = {
        "types": names, "true": z["true"].tolist(), "generated": z["generated"].tolist()}

    k = LABEL_TRANSFER_K
    accuracy, seconds = _timed(neighbourhoods.spatial_label_transfer_accuracy, generated, codes, k)
    reference = neighbourhoods.spatial_label_transfer_accuracy(true, codes, k)
    out.add({"label_transfer_accuracy_spatial": accuracy}, {"label_transfer_accuracy_spatial": {
        "formula": "fraction of cells whose type equals the majority type of their k nearest other cells in generated coordinates",
        "k": min(k, len(true) - 1),
        "reference_on_true_coordinates": reference,
    }}, seconds, **typed)


def _cell_type_expression_family(sample: Sample, config: EvaluationConfig, known, codes, names, out: _Collector) -> None:
    true_expression = sample.true_expression[known]
    generated_expression = sample.generated_expression[known]
    typed = _typed_note(known, names)
    chosen = sample_cells(len(codes), config)
    subset = slice(None) if chosen is None else chosen
    cells = _cells_note(len(codes), chosen, config)

    start = time.perf_counter()
    generated_clusters, how = clusters.leiden_clusters(generated_expression[subset], config.leiden_resolution, config.seed)
    values = clusters.cluster_agreement(codes[subset], generated_clusters, "leiden")
    true_clusters, _ = clusters.leiden_clusters(true_expression[subset], config.leiden_resolution, config.seed)
    reference = clusters.cluster_agreement(codes[subset], true_clusters, "leiden")
    how = {**how, "clustered": "generated expression (measured genes)",
           "reference_on_true_expression": reference}
    out.add(values, {name: {**how, "score": name.rsplit("_", 1)[1]} for name in values},
            time.perf_counter() - start, **cells, **typed)

    (accuracy, how), seconds = _timed(
        clusters.expression_label_transfer_accuracy, true_expression, generated_expression, codes,
        LABEL_TRANSFER_K, config.seed, query_cells=chosen)
    out.add({"label_transfer_accuracy_expression": accuracy}, {"label_transfer_accuracy_expression": how}, seconds, **typed)


def _embedding_family(sample: Sample, config: EvaluationConfig, known, codes, names, out: _Collector) -> None:
    """Leiden clusters of the model's per-cell embedding vs cell types (only when the sample carries one)."""
    embedding = sample.embedding[known]
    chosen = sample_cells(len(codes), config)
    subset = slice(None) if chosen is None else chosen
    start = time.perf_counter()
    labels, how = clusters.leiden_clusters(embedding[subset], config.leiden_resolution, config.seed,
                                           use_pca=embedding.shape[1] > clusters.MAX_PCS)
    values = clusters.cluster_agreement(codes[subset], labels, "embedding_leiden")
    out.add(values, {name: {**how, "clustered": f"obsm['{EMBEDDING_KEY}']"} for name in values},
            time.perf_counter() - start, **_cells_note(len(codes), chosen, config))


def evaluate_sample(adata, evaluation_config: EvaluationConfig, dataset: str | None = None, method: str | None = None,
                    source: str = "sample", reference_dir: str | Path | None = None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """All metrics that apply to one sample AnnData (see the module docstring).

    ``reference_dir``: the preprocessed dataset holding the model's training slices (named in the
    sample's ``uns['alphastomics']['train_slices']``); with it, the table also holds reference rows
    (alphastomics.references) and joint samples get their distribution metrics.

    Returns the tidy table (columns dataset, slice, mode, method, metric, value) and
    metric name -> how it was computed (reference methods under ``"references"``).
    """
    sample = sample_from_anndata(adata, dataset=dataset, method=method, source=source)
    if sample.slice_id in sample.train_slices:
        log.warning("%s: slice %r was one of the model's training slices: these scores measure fit, not generalisation",
                    source, sample.slice_id)
    # One BLAS/OpenMP thread: the pipeline runs several evaluate jobs side by side, and there
    # OpenBLAS's spinning worker threads compete for the cores and slow every job many-fold.
    with threadpool_limits(limits=1):
        if sample.joint_draws and len(sample.joint_draws) > 1:
            out, references = _evaluate_joint_draws(sample, evaluation_config, reference_dir, source)
        else:
            out = _evaluate(sample, evaluation_config, source)
            references = _reference_rows(sample, evaluation_config, reference_dir, out, source)
        _design_family(adata, sample, evaluation_config, reference_dir, out, source)
    frames = [pd.DataFrame({
        "dataset": sample.dataset, "slice": sample.slice_id, "mode": sample.mode, "method": name,
        "metric": list(collector.values), "value": list(collector.values.values()),
    }, columns=TABLE_COLUMNS) for name, collector in [(sample.method, out), *references.items()]]
    table = pd.concat(frames, ignore_index=True)
    common = {"mode": sample.mode, "generated": sample.generated, "n_cells": int(len(sample.true_positions)),
              "n_dims": int(sample.true_positions.shape[1]), "n_measured_genes": len(sample.genes)}
    if sample.slice_id in sample.train_slices:
        common["warning"] = "the model was trained on this slice"
    details = {name: {**how, "sample": common} for name, how in out.how.items()}
    if references:
        details["references"] = {name: collector.how for name, collector in references.items()}
    return table, details


def _evaluate_joint_draws(sample: Sample, config: EvaluationConfig, reference_dir, source: str) -> tuple[_Collector, dict[str, _Collector]]:
    """Every draw of a joint sample scored on its own; each metric is the mean over the draws.

    One draw's distribution metrics move from seed to seed by more than the differences between
    models, so the first draw alone is a noisy estimate of the generator's.
    The reference rows (real training slices) do not depend on the draw: those of the first call.
    """
    per_draw: list[_Collector] = []
    references: dict[str, _Collector] = {}
    for i, (expression_draw, positions_draw) in enumerate(sample.joint_draws):
        draw = dataclasses.replace(sample, generated_expression=expression_draw, generated_positions=positions_draw)
        out = _evaluate(draw, config, source)
        rows = _reference_rows(draw, config, reference_dir, out, source)
        if i == 0:
            references = rows
        per_draw.append(out)
    combined = _Collector()
    for name, how in per_draw[0].how.items():
        values = np.array([o.values.get(name, np.nan) for o in per_draw], dtype=np.float64)
        finite = values[np.isfinite(values)]
        combined.values[name] = float(finite.mean()) if finite.size else float("nan")
        combined.how[name] = {
            **how,
            "summary": (f"mean over the {len(values)} joint draws (draw 0: obsm['{sample_file.SPATIAL_PRED}'], "
                        f"layers['{sample_file.EXPR_PRED}'])"),
            "per_draw": [None if not np.isfinite(v) else float(v) for v in values],
            "sd_over_draws": float(finite.std(ddof=1)) if finite.size > 1 else None,
            "seconds": round(sum(o.how.get(name, {}).get("seconds", 0.0) for o in per_draw), 3),
        }
    return combined, references


def _reference_rows(sample: Sample, config: EvaluationConfig, reference_dir, out: _Collector, source: str) -> dict[str, _Collector]:
    """Reference methods (alphastomics.references); joint's distribution metrics of the generated slice go to ``out``."""
    wanted = sample.mode in ("joint", "pos_to_expr", "impute")
    if not wanted or reference_dir is None:
        if sample.mode == "joint":
            log.warning("%s: no --reference dataset: joint distribution metrics (energy distance, composition) skipped", source)
        return {}
    train_slices = [s for s in sample.train_slices if s != sample.slice_id]
    if not train_slices:
        log.warning("%s: uns['alphastomics'] names no training slice: reference rows skipped", source)
        return {}
    start = time.perf_counter()
    reference = references.load_reference(reference_dir, train_slices, sample.genes, sample.true_positions.shape[1])
    rows: dict[str, _Collector] = {}
    if sample.mode in ("pos_to_expr", "impute"):
        collector = _Collector()
        values, how = references.training_mean_rows(sample.true_expression, reference)
        # A point prediction is its own posterior mean: the same values under expr_mean_*, so that
        # it sits in the same row as the model's posterior mean (and the peers' point predictions).
        values.update({f"expr_mean_{k[5:]}": v for k, v in list(values.items()) if k.startswith("expr_")})
        how.update({f"expr_mean_{k[5:]}": v for k, v in list(how.items()) if k.startswith("expr_")})
        collector.add(values, how, time.perf_counter() - start)
        rows[references.TRAINING_MEAN] = collector
        return rows
    true_types = None
    typed = _known_types(sample)
    if typed is not None:
        true_types = np.array([None if t is None else str(t) for t in sample.cell_types], dtype=object)
    results = references.joint_rows(
        sample.true_expression, sample.true_positions, true_types, sample.generated_expression, sample.generated_positions,
        reference, n_pcs=DISTRIBUTION_PCS, max_cells=ENERGY_MAX_CELLS, label_k=LABEL_TRANSFER_K, morans_k=config.morans_k,
        permutations=ENRICHMENT_PERMUTATIONS, shape_pairs=SHAPE_PAIRS, seed=config.seed, drawn_types=sample.drawn_types)
    seconds = time.perf_counter() - start
    for name, (values, how) in results.items():
        if name == "generated":
            # The generated slice's own Moran's I agreement is already in ``out`` (same definition).
            out.add({k: v for k, v in values.items() if k not in out.values}, how, seconds)
        else:
            collector = _Collector()
            collector.add(values, how, seconds)
            rows[name] = collector
    return rows


def _design_family(adata, sample: Sample, config: EvaluationConfig, reference_dir, out: _Collector, source: str) -> None:
    """Conditional generation and inverse design (alphastomics.metrics.design), guided beside unguided."""
    info = sample_file.sample_info(adata)
    conditioned = sample_file.CONDITION_CELL_TYPE in adata.obs
    target = info.get("target")
    perturbed = bool((info.get("conditions") or {}).get("slice_conditions"))
    if not (conditioned or target or perturbed) or sample_file.EXPR_PRED_UNGUIDED not in adata.layers:
        return
    if reference_dir is None:
        log.warning("%s: a guided sample without --reference dataset: condition and target metrics skipped", source)
        return
    start = time.perf_counter()
    measured = sample_file.measured_genes(adata)
    unguided = dense(adata.layers[sample_file.EXPR_PRED_UNGUIDED][:, measured]).astype(np.float32, copy=False)
    train_slices = [s for s in sample.train_slices if s != sample.slice_id]
    reference = references.load_reference(reference_dir, train_slices, sample.genes, sample.true_positions.shape[1])
    values, how = {}, {}
    if conditioned:
        typer = references.CellTyper(reference, DISTRIBUTION_PCS, LABEL_TRANSFER_K, config.seed)
        if typer.classifier is not None:
            conditions = adata.obs[sample_file.CONDITION_CELL_TYPE].astype(str).to_numpy()
            reference_pcs = np.concatenate([typer.project(r.expression) for r in reference])
            reference_types = np.concatenate([r.cell_types if r.cell_types is not None else np.full(len(r.expression), None)
                                              for r in reference]).astype(str)
            for suffix, expression in (("", sample.generated_expression), ("_unguided", unguided)):
                values[f"condition_type_accuracy{suffix}"] = design.condition_accuracy(typer.predict(expression), conditions)
                values[f"condition_type_energy{suffix}"] = design.per_type_energy(
                    typer.project(expression), conditions, reference_pcs, reference_types, ENERGY_MAX_CELLS, config.seed)
            note = {"classifier": f"{LABEL_TRANSFER_K}-NN on real training cells ({DISTRIBUTION_PCS} PCs)",
                    "unguided": f"layers['{sample_file.EXPR_PRED_UNGUIDED}']: the same seeds without conditions"}
            how.update({k: {"description": "share of conditioned cells typed as their condition" if "accuracy" in k else
                            "energy distance (MMD) of each conditioned type's generated cells to real cells of that type, "
                            "mean over types", **note} for k in values if k.startswith("condition_")})
    if target:
        genes = [str(g) for g in target["genes"]]
        columns = [sample.genes.index(g) for g in genes]
        real = np.concatenate([r.expression for r in reference])
        targeted = np.asarray(adata.obs[sample_file.TARGETED], bool) if sample_file.TARGETED in adata.obs else np.ones(adata.n_obs, bool)
        specs, levels = list(target["spec"]), np.asarray(target["levels"], np.float64)
        sds = real[:, columns].std(0)
        other = np.setdiff1d(np.arange(len(sample.genes)), columns)
        for suffix, expression in (("", sample.generated_expression), ("_unguided", unguided)):
            values[f"target_fraction_met{suffix}"] = float(design.targets_met(expression[targeted][:, columns], specs, levels, sds).mean())
            values[f"target_energy_other_genes{suffix}"] = design.standardised_energy(
                expression[:, other], real[:, other], ENERGY_MAX_CELLS, config.seed)
        if sample_file.TARGET_OBJECTIVE in adata.obs:
            values["target_objective_mean"] = float(np.mean(adata.obs[sample_file.TARGET_OBJECTIVE].to_numpy()[targeted]))
            values["target_objective_mean_unguided"] = float(
                np.mean(adata.obs[sample_file.TARGET_OBJECTIVE_UNGUIDED].to_numpy()[targeted]))
        note = {"targets": specs, "levels": levels.tolist(), "targeted_cells": int(targeted.sum()),
                "unguided": f"layers['{sample_file.EXPR_PRED_UNGUIDED}']: the same seeds without target"}
        how.update({k: {"description": {"target_fraction_met": "share of targeted cells meeting every target (high/low: at or "
                                                                "beyond the level less 0.5 sd; a number: within 0.5 sd)",
                                        "target_energy_other_genes": "energy distance of the non-target genes (scaled by the real "
                                                                     "sd) to real training cells: realism outside the design",
                                        "target_objective_mean": "mean per-cell objective over targeted cells (alphastomics.guidance)"
                                        }[k.removesuffix("_unguided")], **note} for k in values if k.startswith("target_")})
    shifts = references.perturbation_shifts(adata, sample.slice_id, reference_dir, sample.genes, measured,
                                            sample.true_positions.shape[1]) if "expression" in sample.generated else None
    if perturbed and shifts is None:
        log.info("%s: no other slice of %s has the requested slice condition: the predicted shift has nothing observed to be "
                 "compared with", source, reference_dir)
    if shifts is not None:
        values.update(shifts.agreement)
        note = {"requested": shifts.requested, "baseline": shifts.baseline or "unconditional (the slice records no value)",
                "observed_from": f"{', '.join(shifts.condition_slices)} minus {', '.join(shifts.baseline_slices)}",
                "predicted_from": f"layers {shifts.predicted_from}"}
        how.update({k: {"description": {
            "perturbation_shift_pearson": "Pearson over genes of the predicted and the observed mean shift",
            "perturbation_sign_agreement": "share of clearly shifted genes (observed beyond 0.25 sd) predicted with the "
                                           "right sign",
            "perturbation_shift_slope": "least-squares slope of predicted on observed shift (1: the right size)",
            "perturbation_shifted_genes": "genes whose observed shift exceeds 0.25 sd"}[k], **note} for k in shifts.agreement})
    out.add(values, how, time.perf_counter() - start)


def _evaluate(sample: Sample, config: EvaluationConfig, source: str) -> _Collector:
    out = _Collector()
    typed = _known_types(sample)
    if sample.mode == DOMAINS_MODE:
        if sample.embedding is None:
            raise InputError(f"{source}: a {DOMAINS_MODE} sample needs obsm['{EMBEDDING_KEY}']")
        if typed is None:
            log.warning("%s: no obs['cell_type'] with at least two known types: embedding clusters cannot be scored", source)
        else:
            _embedding_family(sample, config, *typed, out)
        return out
    if "expression" in sample.generated:
        if sample.paired:
            _expression_family(sample, out)
        _expression_distribution_family(sample.true_expression, sample.generated_expression, out, f"{sample_file.EXPR_PRED} (first draw)")
    if "position" in sample.generated:
        _shape_family(sample, config, out)
        _placement_family(sample, out)
        if sample.paired:
            _position_family(sample, config, out)
            if sample.consensus_positions is not None:
                _consensus_family(sample, config, out)
    _morans_family(sample, config, out)
    if typed is not None:
        # In joint mode generated cell i has nothing to do with true cell i: no per-cell label metric.
        if sample.paired and "position" in sample.generated:
            _cell_type_position_family(sample, config, *typed, out)
        if sample.paired and "expression" in sample.generated:
            _cell_type_expression_family(sample, config, *typed, out)
        if sample.paired and sample.embedding is not None:
            _embedding_family(sample, config, *typed, out)
    else:
        log.info("%s: no obs['cell_type'] with at least two known types; cluster and cell-type metrics skipped", source)
    return out


# ----------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sample", help="sample file <slice>.<mode>.h5ad written by `alphastomics sample`")
    parser.add_argument("--out", required=True, help="metric table to write (TSV); the JSON of how each metric was computed goes beside it")
    parser.add_argument("--config", default=None, help="config YAML (its evaluation: section is used; defaults otherwise)")
    parser.add_argument("--dataset", default=None, help="dataset name in the table (default: uns['alphastomics']['dataset'])")
    parser.add_argument("--method", default=None, help=f"method name in the table (default: uns['alphastomics']['method'] or {DEFAULT_METHOD})")
    parser.add_argument("--reference", default=None, metavar="DIR",
                        help="preprocessed dataset (results/<dataset>) holding the model's training slices: adds reference "
                             "rows (real training slices for joint, the training-mean predictor for pos_to_expr) and joint's "
                             "distribution metrics")
    parser.add_argument("--if-status", default=None, metavar="JSON",
                        help="status record of a peer method (alphastomics peer): evaluate only when it says ok; otherwise "
                             "write a table with no rows (the report shows the method's status instead)")


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config).evaluation
    if args.if_status:
        from alphastomics.io.peer_status import STATUS_OK, read_status

        status = read_status(args.if_status)
        if status["status"] != STATUS_OK:
            table = pd.DataFrame(columns=TABLE_COLUMNS)
            write_metrics(table, {"status": {k: status.get(k) for k in ("method", "mode", "status", "reason")}}, args.out)
            log.info("%s: %s %s (%s): no metrics", args.if_status, status["method"], status["status"], status.get("reason", ""))
            return 0
    adata = read_sample(args.sample)
    start = time.perf_counter()
    table, details = evaluate_sample(adata, config, dataset=args.dataset, method=args.method, source=str(args.sample),
                                     reference_dir=args.reference)
    table_path, json_path = write_metrics(table, details, args.out)
    log.info("%d metrics of %s in %.1f s -> %s (+ %s)", len(table), args.sample, time.perf_counter() - start, table_path, json_path.name)
    return 0


def add_gather_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tables", nargs="+", help="per-sample metric tables (TSV) written by `alphastomics evaluate`")
    parser.add_argument("--out", required=True, help="dataset metric table to write (TSV)")


def gather_main(args: argparse.Namespace) -> int:
    table = pd.concat([read_metric_table(p) for p in args.tables], ignore_index=True)
    write_table(table, args.out)
    log.info("%d rows from %d tables -> %s", len(table), len(args.tables), args.out)
    return 0
