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
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from alphastomics import DOMAINS_MODE, EVALUATION_MODES, GENERATED_BY_MODE, references
from alphastomics.metrics import design
from alphastomics.config import EvaluationConfig, load_config
from alphastomics.errors import InputError
from alphastomics.layout import CONSENSUS_KEY, CONSENSUS_PREFIX, JOINT_EXPRESSION_DRAWS_KEY, JOINT_POSITION_DRAWS_KEY
from alphastomics.metrics import clusters, distribution, expression, geometry, neighbourhoods, spatial

log = logging.getLogger(__name__)

TABLE_COLUMNS = ["dataset", "slice", "mode", "method", "metric", "value"]
DEFAULT_METHOD = "alphastomics"
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
# Hook for clustering AlphaSTomics embeddings: when a sample file carries the model's per-cell
# embedding under this obsm key, its leiden clusters are scored like those of generated expression.
EMBEDDING_KEY = "alphastomics_embedding"


@dataclass
class Sample:
    """The arrays of one sample file that metrics need (expression restricted to measured genes)."""

    mode: str
    generated: list[str]
    slice_id: str
    dataset: str
    method: str
    genes: list[str]
    true_expression: np.ndarray
    generated_expression: np.ndarray
    true_positions: np.ndarray
    generated_positions: np.ndarray
    cell_types: np.ndarray | None  # None where obs['cell_type'] is absent; unknown entries are None
    embedding: np.ndarray | None
    measured_note: str
    mean_expression: np.ndarray | None = None  # layers['expr_pred_mean']: posterior mean over draws
    consensus_positions: np.ndarray | None = None  # obsm['spatial_pred_consensus']: expr_to_pos consensus layout
    coordinate_frame: str = "per_slice"
    train_slices: list[str] = field(default_factory=list)
    drawn_types: np.ndarray | None = None  # joint: obs['cell_type_drawn'], the type each generated cell was drawn with
    # joint: every draw as (expression, coordinates), draw 0 first (obsm['expr_pred_draws'], obsm['spatial_pred_draws'])
    joint_draws: list[tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def paired(self) -> bool:
        """Generated cell i stands for true cell i (not in joint, where both modalities are generated)."""
        return self.mode != "joint"


# ----------------------------------------------------------------------------------------------
# reading and checking sample files


def read_sample(path: str | Path):
    """Read a sample h5ad, with an InputError naming the file when it is missing or not an h5ad."""
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: sample file not found")
    try:
        return ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - h5py/anndata raise many types for a bad file
        raise InputError(f"{path}: not a readable h5ad file ({type(err).__name__}: {err})") from None


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)


def _uns_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in np.asarray(value).ravel()]


def _require_finite(array: np.ndarray, field: str, source: str) -> None:
    bad = int(np.size(array) - np.isfinite(array).sum())
    if bad:
        raise InputError(f"{source}: {field} holds {bad} non-finite value(s)")


# How a missing label comes out of files written by other tools (str(None), str(NaN), pandas' NA),
# compared lower-cased and stripped: an unknown type must stay unknown, not become a type of its own.
UNKNOWN_CELL_TYPE_SPELLINGS = frozenset({"", "none", "nan", "<na>"})


def cell_type_labels(column) -> np.ndarray:
    """Cell types of an obs column as an object array of str, None where unknown (missing, or
    spelled as one of ``UNKNOWN_CELL_TYPE_SPELLINGS``)."""
    column = pd.Series(column)
    text = column.astype(object).where(column.notna(), None).map(lambda v: None if v is None else str(v))
    known = text.map(lambda v: v is not None and v.strip().lower() not in UNKNOWN_CELL_TYPE_SPELLINGS).to_numpy(dtype=bool)
    labels = text.to_numpy(dtype=object)
    labels[~known] = None
    return labels


def _cell_types(adata) -> np.ndarray | None:
    if "cell_type" not in adata.obs:
        return None
    return cell_type_labels(adata.obs["cell_type"])


def sample_from_anndata(adata, dataset: str | None = None, method: str | None = None, source: str = "sample") -> Sample:
    """Check a sample AnnData against docs/FORMATS.md and extract what the metrics need.

    Raises InputError naming ``source`` and the missing or bad field.
    """
    for key in ("spatial", "spatial_pred"):
        if key not in adata.obsm:
            raise InputError(f"{source}: obsm['{key}'] is missing")
    if "expr_pred" not in adata.layers:
        raise InputError(f"{source}: layers['expr_pred'] is missing")
    info = dict(adata.uns.get("alphastomics", {}))
    mode = str(info.get("mode", ""))
    if mode not in EVALUATION_MODES:
        raise InputError(f"{source}: uns['alphastomics']['mode'] is {mode!r}, not one of {', '.join(EVALUATION_MODES)}")
    generated = _uns_list(info.get("generated")) if "generated" in info else GENERATED_BY_MODE.get(mode, [])
    if not generated and mode != DOMAINS_MODE:
        generated = GENERATED_BY_MODE[mode]
    unknown = set(generated) - {"expression", "position"}
    if unknown:
        raise InputError(f"{source}: uns['alphastomics']['generated'] holds unknown entries {sorted(unknown)}")

    true_positions = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    generated_positions = np.asarray(adata.obsm["spatial_pred"], dtype=np.float64)
    if true_positions.ndim != 2 or generated_positions.shape != true_positions.shape:
        raise InputError(f"{source}: obsm['spatial_pred'] has shape {generated_positions.shape}, obsm['spatial'] {true_positions.shape}; they must match")
    if adata.layers["expr_pred"].shape != adata.shape:
        raise InputError(f"{source}: layers['expr_pred'] has shape {adata.layers['expr_pred'].shape}, X {adata.shape}; they must match")
    if adata.n_obs < 3:
        raise InputError(f"{source}: {adata.n_obs} cell(s); metrics need at least 3")

    if "measured" in adata.var:
        measured = np.asarray(adata.var["measured"], dtype=bool)
        measured_note = "var['measured']"
    else:
        measured = np.ones(adata.n_vars, dtype=bool)
        measured_note = "all genes (var['measured'] absent)"
    if not measured.any():
        raise InputError(f"{source}: var['measured'] marks no gene as measured")
    if mode == "impute":
        # Only the held-out genes were generated; the given ones are copies of the truth.
        if "heldout" not in adata.var:
            raise InputError(f"{source}: an impute sample needs var['heldout'] (the generated genes)")
        measured = measured & np.asarray(adata.var["heldout"], dtype=bool)
        measured_note = "held-out genes (var['heldout'] & var['measured'])"
        if not measured.any():
            raise InputError(f"{source}: var['heldout'] marks no measured gene")
    true_expression = _dense(adata.X[:, measured]).astype(np.float32, copy=False)
    generated_expression = _dense(adata.layers["expr_pred"][:, measured]).astype(np.float32, copy=False)
    for array, field in ((true_expression, "X"), (generated_expression, "layers['expr_pred']"),
                         (true_positions, "obsm['spatial']"), (generated_positions, "obsm['spatial_pred']")):
        _require_finite(array, field, source)

    slice_ids = adata.obs["slice_id"].astype(str).unique() if "slice_id" in adata.obs else []
    slice_id = str(info.get("slice_id") or (slice_ids[0] if len(slice_ids) == 1 else Path(source).name.split(".")[0]))
    embedding = np.asarray(adata.obsm[EMBEDDING_KEY], dtype=np.float32) if EMBEDDING_KEY in adata.obsm else None
    mean_expression = None
    if "expr_pred_mean" in adata.layers:
        mean_expression = _dense(adata.layers["expr_pred_mean"][:, measured]).astype(np.float32, copy=False)
        _require_finite(mean_expression, "layers['expr_pred_mean']", source)
    consensus_positions = None
    if CONSENSUS_KEY in adata.obsm:
        consensus_positions = np.asarray(adata.obsm[CONSENSUS_KEY], dtype=np.float64)
        if consensus_positions.shape != true_positions.shape:
            raise InputError(f"{source}: obsm['{CONSENSUS_KEY}'] has shape {consensus_positions.shape}, obsm['spatial'] "
                             f"{true_positions.shape}; they must match")
        _require_finite(consensus_positions, f"obsm['{CONSENSUS_KEY}']", source)
    joint_draws = _joint_draws(adata, measured, true_positions.shape, source) if mode == "joint" else None
    return Sample(
        mode=mode,
        generated=generated,
        slice_id=slice_id,
        dataset=str(dataset or info.get("dataset") or "unknown"),
        method=str(method or info.get("method") or DEFAULT_METHOD),
        genes=[str(g) for g in adata.var_names[measured]],
        true_expression=true_expression,
        generated_expression=generated_expression,
        true_positions=true_positions,
        generated_positions=generated_positions,
        cell_types=_cell_types(adata),
        embedding=embedding,
        measured_note=measured_note,
        mean_expression=mean_expression,
        consensus_positions=consensus_positions,
        coordinate_frame=str(info.get("coordinate_frame") or "per_slice"),
        train_slices=_uns_list(info.get("train_slices")),
        drawn_types=adata.obs["cell_type_drawn"].astype(str).to_numpy() if mode == "joint" and "cell_type_drawn" in adata.obs else None,
        joint_draws=joint_draws,
    )


def _joint_draws(adata, measured: np.ndarray, positions_shape: tuple, source: str) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The draws of a joint sample, when it keeps more than one (sample --num-samples S)."""
    keys = (JOINT_EXPRESSION_DRAWS_KEY, JOINT_POSITION_DRAWS_KEY)
    present = [k in adata.obsm for k in keys]
    if not any(present):
        return None
    if not all(present):
        raise InputError(f"{source}: a joint sample with obsm['{keys[present.index(False)]}'] missing beside "
                         f"obsm['{keys[present.index(True)]}']: both or neither")
    expression = np.asarray(adata.obsm[JOINT_EXPRESSION_DRAWS_KEY])
    positions = np.asarray(adata.obsm[JOINT_POSITION_DRAWS_KEY], dtype=np.float64)
    n, dims = positions_shape
    if expression.ndim != 3 or expression.shape[::2] != (n, adata.n_vars):
        raise InputError(f"{source}: obsm['{JOINT_EXPRESSION_DRAWS_KEY}'] has shape {expression.shape}; expected "
                         f"(cells {n}, draws, genes {adata.n_vars})")
    if positions.ndim != 3 or positions.shape[::2] != (n, dims) or positions.shape[1] != expression.shape[1]:
        raise InputError(f"{source}: obsm['{JOINT_POSITION_DRAWS_KEY}'] has shape {positions.shape}; expected "
                         f"(cells {n}, draws {expression.shape[1]}, dims {dims})")
    draws = []
    for i in range(expression.shape[1]):
        draw_expression = expression[:, i, measured].astype(np.float32)
        _require_finite(draw_expression, f"obsm['{JOINT_EXPRESSION_DRAWS_KEY}'][:, {i}]", source)
        _require_finite(positions[:, i], f"obsm['{JOINT_POSITION_DRAWS_KEY}'][:, {i}]", source)
        draws.append((draw_expression, positions[:, i]))
    return draws


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
    out.add(values, how, seconds, measured_genes=sample.measured_note, layer="expr_pred (first draw)")
    if sample.mean_expression is not None:
        (values, how), seconds = _timed(expression.expression_metrics, sample.true_expression, sample.mean_expression)
        out.add({f"expr_mean_{k[5:]}": v for k, v in values.items()}, {f"expr_mean_{k[5:]}": v for k, v in how.items()},
                seconds, measured_genes=sample.measured_note, layer="expr_pred_mean (mean over draws)")


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
        out.how[CONSENSUS_PREFIX + name] = {**part.how[name], "layer": f"obsm['{CONSENSUS_KEY}'] (consensus layout of the draws)"}


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
    # OpenBLAS's spinning worker threads made a 1,000-cell slice ~15x slower (10 s instead of 0.6 s).
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

    One draw's distribution metrics move from seed to seed (STARmap BZ14: composition L1
    0.23-0.32 over eight draws), so the first draw alone is a noisy estimate of the generator's.
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
            "summary": f"mean over the {len(values)} joint draws (draw 0: obsm['spatial_pred'], layers['expr_pred'])",
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
    info = dict(adata.uns.get("alphastomics", {}))
    conditioned = "condition_cell_type" in adata.obs
    target = info.get("target")
    perturbed = bool((info.get("conditions") or {}).get("slice_conditions"))
    if not (conditioned or target or perturbed) or "expr_pred_unguided" not in adata.layers:
        return
    if reference_dir is None:
        log.warning("%s: a guided sample without --reference dataset: condition and target metrics skipped", source)
        return
    start = time.perf_counter()
    measured = np.asarray(adata.var["measured"], dtype=bool) if "measured" in adata.var else np.ones(adata.n_vars, bool)
    unguided = _dense(adata.layers["expr_pred_unguided"][:, measured]).astype(np.float32, copy=False)
    train_slices = [s for s in sample.train_slices if s != sample.slice_id]
    reference = references.load_reference(reference_dir, train_slices, sample.genes, sample.true_positions.shape[1])
    values, how = {}, {}
    if conditioned:
        typer = references.CellTyper(reference, DISTRIBUTION_PCS, LABEL_TRANSFER_K, config.seed)
        if typer.classifier is not None:
            conditions = adata.obs["condition_cell_type"].astype(str).to_numpy()
            reference_pcs = np.concatenate([typer.project(r.expression) for r in reference])
            reference_types = np.concatenate([r.cell_types if r.cell_types is not None else np.full(len(r.expression), None)
                                              for r in reference]).astype(str)
            for suffix, expression in (("", sample.generated_expression), ("_unguided", unguided)):
                values[f"condition_type_accuracy{suffix}"] = design.condition_accuracy(typer.predict(expression), conditions)
                values[f"condition_type_energy{suffix}"] = design.per_type_energy(
                    typer.project(expression), conditions, reference_pcs, reference_types, ENERGY_MAX_CELLS, config.seed)
            note = {"classifier": f"{LABEL_TRANSFER_K}-NN on real training cells ({DISTRIBUTION_PCS} PCs)",
                    "unguided": "layers['expr_pred_unguided']: the same seeds without conditions"}
            how.update({k: {"description": "share of conditioned cells typed as their condition" if "accuracy" in k else
                            "energy distance (MMD) of each conditioned type's generated cells to real cells of that type, "
                            "mean over types", **note} for k in values if k.startswith("condition_")})
    if target:
        genes = [str(g) for g in target["genes"]]
        columns = [sample.genes.index(g) for g in genes]
        real = np.concatenate([r.expression for r in reference])
        targeted = np.asarray(adata.obs["targeted"], bool) if "targeted" in adata.obs else np.ones(adata.n_obs, bool)
        specs, levels = list(target["spec"]), np.asarray(target["levels"], np.float64)
        sds = real[:, columns].std(0)
        other = np.setdiff1d(np.arange(len(sample.genes)), columns)
        for suffix, expression in (("", sample.generated_expression), ("_unguided", unguided)):
            values[f"target_fraction_met{suffix}"] = float(design.targets_met(expression[targeted][:, columns], specs, levels, sds).mean())
            values[f"target_energy_other_genes{suffix}"] = design.standardised_energy(
                expression[:, other], real[:, other], ENERGY_MAX_CELLS, config.seed)
        if "target_objective" in adata.obs:
            values["target_objective_mean"] = float(np.mean(adata.obs["target_objective"].to_numpy()[targeted]))
            values["target_objective_mean_unguided"] = float(np.mean(adata.obs["target_objective_unguided"].to_numpy()[targeted]))
        note = {"targets": specs, "levels": levels.tolist(), "targeted_cells": int(targeted.sum()),
                "unguided": "layers['expr_pred_unguided']: the same seeds without target"}
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
        _expression_distribution_family(sample.true_expression, sample.generated_expression, out, "expr_pred (first draw)")
    if "position" in sample.generated:
        _shape_family(sample, config, out)
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
# output


def _nan_to_none(value):
    """JSON has no NaN: write null for non-finite numbers, recursively."""
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _write_atomically(path: Path, text: str) -> None:
    """Write under a temporary name and rename, so a failed run never leaves a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def details_path(table_path: str | Path) -> Path:
    """``metrics/<slice>.<mode>.tsv`` -> ``metrics/<slice>.<mode>.json``."""
    return Path(table_path).with_suffix(".json")


def write_metrics(table: pd.DataFrame, details: dict, out: str | Path) -> tuple[Path, Path]:
    """Write the TSV and, beside it, the JSON of how each metric was computed."""
    out = Path(out)
    json_path = details_path(out)
    _write_atomically(json_path, json.dumps(_nan_to_none(details), indent=1) + "\n")
    _write_atomically(out, table.to_csv(sep="\t", index=False, na_rep="NaN", float_format="%.10g"))
    return out, json_path


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
        from alphastomics.peers.run import STATUS_OK, read_status

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


def read_metric_table(path: str | Path) -> pd.DataFrame:
    """One tidy metric table, with an InputError naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: metric table not found")
    try:
        table = pd.read_csv(path, sep="\t", dtype={c: str for c in TABLE_COLUMNS[:-1]})
    except Exception as err:  # noqa: BLE001 - pandas raises several types for a bad file
        raise InputError(f"{path}: not a readable TSV ({type(err).__name__}: {err})") from None
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    table["value"] = pd.to_numeric(table["value"], errors="coerce")
    return table[TABLE_COLUMNS]


def add_gather_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tables", nargs="+", help="per-sample metric tables (TSV) written by `alphastomics evaluate`")
    parser.add_argument("--out", required=True, help="dataset metric table to write (TSV)")


def gather_main(args: argparse.Namespace) -> int:
    table = pd.concat([read_metric_table(p) for p in args.tables], ignore_index=True)
    _write_atomically(Path(args.out), table.to_csv(sep="\t", index=False, na_rep="NaN", float_format="%.10g"))
    log.info("%d rows from %d tables -> %s", len(table), len(args.tables), args.out)
    return 0
