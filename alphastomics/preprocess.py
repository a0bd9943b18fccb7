"""Commands ``preprocess`` (h5ad files of one platform -> Parquet shards + manifest) and ``gene-list``.

Every input is validated (file, keys, coordinates, genes, slices, kind of values) before anything
is written. Expression is then streamed in row chunks: normalised, mapped onto the fixed gene list
(zeros for genes the platform did not measure; the manifest records which were measured) and
appended to per-slice shard writers. Shards are written under hidden temporary names and renamed
only after every file succeeded; the manifest, written last and atomically, marks completion.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm import tqdm

from alphastomics import __version__
from alphastomics.errors import InputError
from alphastomics.io.files import atomic_write_text, remove_stale_temp_files, sha256_file
from alphastomics.io.h5ad import H5adFile, Matrix, read_var_names
from alphastomics.io.manifest import FORMAT_VERSION, MANIFEST_NAME, write_manifest
from alphastomics.io.names import file_keys_to_slice_ids, slice_file_key
from alphastomics.io.shards import DEFAULT_MAX_CELLS_PER_SHARD, BackgroundWriter, CellBatch, SliceShardWriter

log = logging.getLogger(__name__)

NORMALIZATIONS = ("auto", "log1p", "none")
GENE_LIST_MODES = ("intersection", "union")
TARGET_SUM = 1e4
# Chunks are kept small (10k rows, ~20 MB dense at 500 genes): glibc then serves their arrays from
# reused heap memory instead of fresh mmaps, which halved wall time and peak RSS in the benchmark
# compared with 50k-row chunks (page faults dominated system time).
DEFAULT_CHUNK_SIZE = 10_000
CHUNK_BYTES_BUDGET = 32 << 20  # one chunk's dense matrices stay around this size
MAX_BUFFERED_ROWS_FACTOR = 2  # rows buffered across slice writers, in chunks, before a forced flush
APPLIED_LIBRARY_SIZE = "library_size_log1p"


# ============================================================================================
# gene lists
# ============================================================================================
def read_gene_list_file(path: str | Path) -> list[str]:
    """Symbols of a gene-list file: one a line; blanks and '#' comments skipped, duplicates dropped."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: gene list file not found (give a file, or 'intersection' / 'union')")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: gene list file cannot be read as text ({err})") from None
    genes, seen = [], set()
    for line in lines:
        symbol = line.split("#", 1)[0].strip()
        if not symbol:
            continue
        if symbol in seen:
            log.warning("%s: gene %s listed more than once; kept once", path, symbol)
            continue
        seen.add(symbol)
        genes.append(symbol)
    if not genes:
        raise InputError(f"{path}: gene list file is empty")
    return genes


def derive_gene_list(files: list[Path], mode: str) -> list[str]:
    """Intersection or union of the panels of ``files``, case-insensitively.

    Order is that of first appearance (file order, then var order) and the first spelling seen is
    kept, so the list is deterministic for a given file order.
    """
    if not files:
        raise InputError(f"gene list '{mode}' needs at least one h5ad file")
    spelling: dict[str, str] = {}
    order: list[str] = []
    common: set[str] | None = None
    for path in files:
        panel = _unique_var_names(path)
        keys = [g.lower() for g in panel]
        for key, gene in zip(keys, panel):
            if key not in spelling:
                spelling[key] = gene
                order.append(key)
        common = set(keys) if common is None else common & set(keys)
    chosen = order if mode == "union" else [k for k in order if k in common]
    if not chosen:
        raise InputError(f"the panels of {', '.join(map(str, files))} have no gene in common (gene list 'intersection')")
    return [spelling[k] for k in chosen]


def resolve_gene_list(spec: str | None, files: list[Path]) -> list[str]:
    """The fixed gene list: from a file, or derived from ``files`` (default: intersection)."""
    if spec is None or spec in GENE_LIST_MODES:
        return derive_gene_list(files, spec or "intersection")
    return read_gene_list_file(spec)


def _unique_var_names(path: Path) -> list[str]:
    names = [str(n) for n in read_var_names(path)]
    _check_unique_genes(names, path)
    return names


def _check_unique_genes(names, path: Path) -> None:
    counts = pd.Series(names).value_counts()
    duplicated = counts[counts > 1]
    if len(duplicated):
        shown = ", ".join(f"{g} (x{n})" for g, n in duplicated.head(10).items())
        raise InputError(f"{path}: duplicated gene names in var: {shown}{' ...' if len(duplicated) > 10 else ''}")


@dataclass
class GeneMatch:
    """Where each gene of the list is found in one file's panel."""

    source_columns: np.ndarray  # columns of the file's matrix, in gene-list order of the matched genes
    target_positions: np.ndarray  # positions in the gene list of those genes
    unmatched: list[str]  # genes of the list the file does not have
    case_insensitive: list[tuple[str, str]]  # (list symbol, file symbol) matched ignoring case


def match_genes(genes: list[str], var_names, path: Path) -> GeneMatch:
    """Exact match first, then case-insensitive among the still unused var names."""
    exact = {name: i for i, name in enumerate(var_names)}
    used: set[int] = set()
    found: dict[int, int] = {}
    for pos, gene in enumerate(genes):
        if gene in exact:
            found[pos] = exact[gene]
            used.add(exact[gene])
    by_lower: dict[str, list[int]] = {}
    for i, name in enumerate(var_names):
        if i not in used:
            by_lower.setdefault(name.lower(), []).append(i)
    case_insensitive = []
    for pos, gene in enumerate(genes):
        candidates = by_lower.get(gene.lower(), []) if pos not in found else []
        if len(candidates) == 1:  # ambiguous spellings stay unmatched rather than guessed
            found[pos] = candidates[0]
            case_insensitive.append((gene, var_names[candidates[0]]))
            by_lower[gene.lower()] = []
    if not found:
        raise InputError(f"{path}: no gene of the gene list ({len(genes)} genes, e.g. {', '.join(genes[:5])}) is in this file's panel")
    positions = np.array(sorted(found), dtype=np.int64)
    return GeneMatch(
        source_columns=np.array([found[p] for p in positions], dtype=np.int64),
        target_positions=positions,
        unmatched=[g for p, g in enumerate(genes) if p not in found],
        case_insensitive=case_insensitive,
    )


# ============================================================================================
# validation of one file (nothing written)
# ============================================================================================
@dataclass
class Options:
    platform: str
    out_dir: Path
    manifest_path: Path
    dataset: str
    gene_list: str | None = None
    position_key: str = "spatial"
    slice_key: str | None = None
    cell_type_key: str | None = None
    layer: str | None = None
    z_key: str | None = None
    z_value: float = 0.0
    normalization: str = "auto"
    on_invalid: str = "drop"
    max_cells_per_shard: int = DEFAULT_MAX_CELLS_PER_SHARD
    chunk_size: int = DEFAULT_CHUNK_SIZE
    slabs: tuple[str, int] | None = None  # (axis, count): cut each slice into slabs of equal cell count
    slice_covariates: tuple[str, ...] = ()  # obs keys constant within a slice (condition, region, time point)


@dataclass
class FilePlan:
    """Everything about one input file except its expression values, checked and ready."""

    path: Path
    n_obs: int
    gene_match: GeneMatch
    coords: np.ndarray  # (n_obs, 3) float32
    n_dims: int
    keep: np.ndarray  # (n_obs,) bool, False where coordinates are not finite
    slice_codes: np.ndarray  # (n_obs,) int32 into slice_ids
    slice_ids: list[str]
    cell_type_codes: np.ndarray  # (n_obs,) int32 into categories, -1 unknown
    categories: list[str]
    covariates: dict[str, dict[str, str]]  # slice id -> {obs key: value}
    normalization_applied: str
    matrix_encoding: str
    n_file_genes: int

    @property
    def n_dropped(self) -> int:
        return int((~self.keep).sum())


def plan_file(path: Path, genes: list[str], opts: Options) -> FilePlan:
    with H5adFile(path) as h5ad:
        var_names = [str(n) for n in h5ad.var_names]
        _check_unique_genes(var_names, path)
        gene_match = match_genes(genes, var_names, path)
        matrix = h5ad.matrix(opts.layer)
        if matrix.shape != (h5ad.n_obs, len(var_names)):
            raise InputError(f"{matrix.label}: shape {matrix.shape} does not match obs x var ({h5ad.n_obs} x {len(var_names)})")
        coords, n_dims = read_coordinates(h5ad, opts)
        keep = np.isfinite(coords).all(axis=1)
        if not keep.all():
            _handle_invalid_positions(h5ad, keep, opts)
        slice_codes, slice_ids = read_slices(h5ad, opts)
        if opts.slabs is not None:
            slice_codes, slice_ids = cut_into_slabs(coords, keep, slice_codes, slice_ids, *opts.slabs)
        cell_type_codes, categories = read_cell_types(h5ad, opts)
        covariates = read_slice_covariates(h5ad, opts, slice_codes, slice_ids)
        applied = decide_normalization(matrix, opts.normalization)
        plan = FilePlan(
            path=path, n_obs=h5ad.n_obs, gene_match=gene_match, coords=coords, n_dims=n_dims, keep=keep,
            slice_codes=slice_codes, slice_ids=slice_ids, cell_type_codes=cell_type_codes, categories=categories,
            covariates=covariates,
            normalization_applied=applied, matrix_encoding=matrix.encoding, n_file_genes=len(var_names),
        )
    _check_no_empty_slice(plan)
    return plan


def read_coordinates(h5ad: H5adFile, opts: Options) -> tuple[np.ndarray, int]:
    """(n_obs, 3) float32 coordinates and the dimensionality of the data (2 or 3)."""
    raw = h5ad.obsm_array(opts.position_key)
    if raw.ndim != 2 or raw.shape[1] not in (2, 3) or raw.shape[0] != h5ad.n_obs:
        raise InputError(
            f"{h5ad.path}: obsm[{opts.position_key!r}] has shape {raw.shape}; expected (n_obs={h5ad.n_obs}, 2) or (n_obs, 3)"
        )
    if raw.dtype.kind not in "fiu":
        raise InputError(f"{h5ad.path}: obsm[{opts.position_key!r}] is not numeric (dtype {raw.dtype})")
    coords = np.zeros((raw.shape[0], 3), dtype=np.float32)
    coords[:, : raw.shape[1]] = raw
    if raw.shape[1] == 3:
        if opts.z_key is not None:
            log.warning("%s: obsm[%r] is 3-D; --z-key %s is ignored", h5ad.path, opts.position_key, opts.z_key)
        return coords, 3
    if opts.z_key is not None:
        z = h5ad.obs_column(opts.z_key, "--z-key")
        try:
            coords[:, 2] = np.asarray(z, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{h5ad.path}: obs[{opts.z_key!r}] (--z-key) is not numeric") from None
    else:
        coords[:, 2] = opts.z_value
    return coords, 2


def _handle_invalid_positions(h5ad: H5adFile, keep: np.ndarray, opts: Options) -> None:
    bad_rows = np.flatnonzero(~keep)
    examples = ", ".join(str(h5ad.obs_names(int(r), int(r) + 1)[0]) for r in bad_rows[:5])
    what = f"{len(bad_rows)} cell(s) with NaN or infinite coordinates in obsm[{opts.position_key!r}] (e.g. {examples})"
    if opts.on_invalid == "error":
        raise InputError(f"{h5ad.path}: {what}; use --on-invalid drop to drop them")
    log.warning("%s: dropping %s", h5ad.path, what)


def _labels_to_codes(values, path: Path, key: str, allow_missing: bool) -> tuple[np.ndarray, list[str]]:
    """Integer codes and string labels of an obs column; -1 for missing values."""
    if isinstance(values, pd.Categorical):
        codes, labels = np.asarray(values.codes, dtype=np.int32), [str(c) for c in values.categories]
    else:
        codes, uniques = pd.factorize(pd.Series(values), sort=False)
        codes, labels = codes.astype(np.int32), [str(u) for u in uniques]
    if not allow_missing and (codes < 0).any():
        raise InputError(f"{path}: obs[{key!r}] has {int((codes < 0).sum())} missing value(s)")
    return codes, labels


def read_slices(h5ad: H5adFile, opts: Options) -> tuple[np.ndarray, list[str]]:
    return _slice_codes(h5ad, opts.slice_key)


def _slice_codes(h5ad: H5adFile, slice_key: str | None) -> tuple[np.ndarray, list[str]]:
    if slice_key is None:  # one slice per file, named after it
        return np.zeros(h5ad.n_obs, dtype=np.int32), [h5ad.path.stem]
    values = h5ad.obs_column(slice_key, "--slice-key")
    return _labels_to_codes(values, h5ad.path, slice_key, allow_missing=False)


AXES = {"x": 0, "y": 1, "z": 2}


def slab_id(slice_id: str, index: int) -> str:
    return f"{slice_id}_slab{index}"


def cut_into_slabs(coords: np.ndarray, keep: np.ndarray, codes: np.ndarray, ids: list[str], axis: str, count: int
                   ) -> tuple[np.ndarray, list[str]]:
    """Cut every slice into ``count`` slabs of equal cell count along ``axis``: serial sections of one
    volume (or strips of one section) that share a coordinate frame. Slab i of slice s is
    ``s_slab<i>``, numbered from the low end of the axis."""
    new_codes = np.full(codes.shape, -1, dtype=np.int32)
    new_ids: list[str] = []
    for code, slice_id in enumerate(ids):
        cells = np.flatnonzero((codes == code) & keep)
        if cells.size == 0:
            continue
        position = coords[cells, AXES[axis]]
        rank = np.empty(cells.size, dtype=np.int64)
        rank[np.argsort(position, kind="stable")] = np.arange(cells.size)
        slab = (rank * count) // cells.size
        for i in range(count):
            new_codes[cells[slab == i]] = len(new_ids)
            new_ids.append(slab_id(slice_id, i))
    new_codes[~keep] = 0 if new_ids else -1  # dropped cells: never written
    return new_codes, new_ids


def parse_slabs(text: str | None) -> tuple[str, int] | None:
    """``"x:4"`` -> ("x", 4)."""
    if not text:
        return None
    axis, _, count = text.partition(":")
    if axis not in AXES or not count.isdigit() or int(count) < 2:
        raise InputError(f"--slabs {text!r}: expected AXIS:COUNT with AXIS one of x, y, z and COUNT >= 2 (e.g. x:4)")
    return axis, int(count)


def slice_ids_in_file(path: str | Path, slice_key: str | None, slabs: tuple[str, int] | None = None) -> list[str]:
    """Sorted slice ids of the cells of one file, exactly as preprocessing will name them.

    Reads only ``obs[slice_key]`` (nothing when ``slice_key`` is None: the file stem), so the
    workflow can check the configured test and validation slices before any job runs. With
    ``slabs`` every slice becomes its slabs.
    """
    with H5adFile(path) as h5ad:
        codes, labels = _slice_codes(h5ad, slice_key)
    ids = [labels[c] for c in np.unique(codes)]
    if slabs is not None:
        ids = [slab_id(s, i) for s in ids for i in range(slabs[1])]
    return sorted(ids)


def read_slice_covariates(h5ad: H5adFile, opts: Options, slice_codes: np.ndarray, slice_ids: list[str]) -> dict[str, dict[str, str]]:
    """Per slice, the value of each ``--slice-covariates`` obs key; it must be one value per slice."""
    covariates: dict[str, dict[str, str]] = {sid: {} for sid in slice_ids}
    for key in opts.slice_covariates:
        codes, labels = _labels_to_codes(h5ad.obs_column(key, "--slice-covariates"), h5ad.path, key, allow_missing=False)
        for code, slice_id in enumerate(slice_ids):
            values = np.unique(codes[slice_codes == code])
            if len(values) > 1:
                shown = ", ".join(labels[v] for v in values[:4])
                raise InputError(f"{h5ad.path}: obs[{key!r}] (--slice-covariates) takes several values within slice "
                                 f"{slice_id!r} ({shown}); a slice covariate has one value per slice")
            if len(values):
                covariates[slice_id][key] = labels[values[0]]
    return covariates


def read_cell_types(h5ad: H5adFile, opts: Options) -> tuple[np.ndarray, list[str]]:
    if opts.cell_type_key is None:
        return np.full(h5ad.n_obs, -1, dtype=np.int32), []
    values = h5ad.obs_column(opts.cell_type_key, "--cell-type-key")
    return _labels_to_codes(values, h5ad.path, opts.cell_type_key, allow_missing=True)


def _check_no_empty_slice(plan: FilePlan) -> None:
    present = np.unique(plan.slice_codes)
    kept = np.bincount(plan.slice_codes[plan.keep], minlength=len(plan.slice_ids))
    empty = [plan.slice_ids[c] for c in present if kept[c] == 0]
    if empty:
        raise InputError(
            f"{plan.path}: slice(s) {', '.join(map(repr, empty))} left with zero cells after dropping cells with invalid coordinates"
        )


def decide_normalization(matrix: Matrix, requested: str) -> str:
    """What will be applied: 'library_size_log1p', 'log1p' or 'none'.

    ``auto`` looks at values sampled across the matrix: integer-valued data are taken as counts.
    The same sample catches negative counts early, before anything is written; the full pass
    checks every value again.
    """
    if requested == "none":
        return "none"
    sample = matrix.sample_values()
    if sample.size and not np.isfinite(sample).all():
        raise InputError(f"{matrix.label}: expression holds NaN or infinite values")
    if requested == "log1p":
        applied = "log1p"
    elif sample.size == 0 or np.array_equal(sample, np.round(sample)):
        applied = APPLIED_LIBRARY_SIZE
    else:
        log.info("%s: values are not integers; expression left as it is (normalisation auto)", matrix.label)
        applied = "none"
    if applied != "none" and sample.size and sample.min() < 0:
        raise InputError(_negative_counts_message(matrix.label, float(sample.min()), "sampled rows"))
    return applied


def _negative_counts_message(label: str, minimum: float, where: str) -> str:
    return (f"{label}: negative expression values (min {minimum:g}, {where}) where counts are expected; "
            "use --normalization none for data that are already normalised")


# ============================================================================================
# expression
# ============================================================================================
def _check_values(values: np.ndarray, label: str, start: int, counts_expected: bool) -> None:
    if values.size == 0:
        return
    if not np.isfinite(values).all():
        raise InputError(f"{label}: expression holds NaN or infinite values (rows {start}+)")
    if counts_expected and values.min() < 0:
        raise InputError(_negative_counts_message(label, float(values.min()), f"rows {start}+"))


def normalise_chunk(rows, plan: FilePlan, n_genes: int, label: str, start: int) -> np.ndarray:
    """(n, n_genes) float32 on the gene list from the file's rows (dense ndarray or CSR).

    Columns are selected before the element-wise work, and for sparse rows that work touches only
    the stored values (log1p(0) = 0), so its cost follows the non-zeros of the listed genes.
    ``rows`` is consumed: it may be modified in place.
    """
    applied = plan.normalization_applied
    sparse = sp.issparse(rows)
    _check_values(rows.data if sparse else rows, label, start, counts_expected=applied != "none")
    scale = None
    if applied == APPLIED_LIBRARY_SIZE:
        # Library size over ALL genes of the file, before subsetting to the gene list: it measures
        # the cell's sequencing depth, which must not depend on which genes the list happens to keep.
        totals = np.asarray(rows.sum(axis=1), dtype=np.float64).ravel()
        scale = np.divide(TARGET_SUM, totals, out=np.zeros_like(totals), where=totals > 0).astype(np.float32)
    columns = plan.gene_match.source_columns
    identity = len(columns) == rows.shape[1] and np.array_equal(columns, np.arange(rows.shape[1]))
    subset = rows if identity else rows[:, columns]
    if sparse:
        subset.sum_duplicates()  # log1p of split duplicates would differ from log1p of their sum
        values = subset.data
        if scale is not None:
            values *= np.repeat(scale, np.diff(subset.indptr))
    else:
        subset = np.asarray(subset, dtype=np.float32)
        values = subset
        if scale is not None:
            values *= scale[:, None]
    if applied in (APPLIED_LIBRARY_SIZE, "log1p"):
        np.log1p(values, out=values)
    if len(columns) == n_genes:  # every gene measured: positions are 0..G-1 in order
        return subset.toarray() if sparse else subset
    out = np.zeros((subset.shape[0], n_genes), dtype=np.float32)
    out[:, plan.gene_match.target_positions] = subset.toarray() if sparse else subset
    return out


def chunk_rows(opts: Options, plan: FilePlan, n_genes: int) -> int:
    """Rows per chunk: the requested size, lowered so one chunk's dense matrices fit the budget."""
    widest = max(n_genes, plan.n_file_genes if plan.matrix_encoding == "dense" else 0)
    return max(1, min(opts.chunk_size, CHUNK_BYTES_BUDGET // (4 * widest)))


# ============================================================================================
# writing
# ============================================================================================
class RunWriters:
    """Shard writers of every slice of the run; committed together or not at all."""

    def __init__(self, opts: Options, n_genes: int):
        self.opts, self.n_genes = opts, n_genes
        self.writers: dict[str, SliceShardWriter] = {}
        self.io = BackgroundWriter()

    def for_file(self, plan: FilePlan) -> dict[int, SliceShardWriter]:
        writers = {}
        for code in np.unique(plan.slice_codes):
            slice_id = plan.slice_ids[code]
            writer = SliceShardWriter(self.opts.out_dir, slice_id, self.opts.platform, self.n_genes, plan.categories,
                                      max_rows=self.opts.max_cells_per_shard,
                                      row_group_rows=min(self.opts.chunk_size, 65_536), io=self.io)
            self.writers[slice_id] = writer
            writers[int(code)] = writer
        return writers

    def commit(self, relative_to: Path) -> dict[str, list[dict]]:
        self.io.drain()
        shards = {slice_id: writer.commit(relative_to) for slice_id, writer in self.writers.items()}
        self.io.shutdown()
        return shards

    def abort(self) -> None:
        self.io.shutdown()
        for writer in self.writers.values():
            writer.abort()


def write_file_shards(plan: FilePlan, writers: dict[int, SliceShardWriter], opts: Options, n_genes: int) -> None:
    rows_per_chunk = chunk_rows(opts, plan, n_genes)
    with H5adFile(plan.path) as h5ad:
        matrix = h5ad.matrix(opts.layer)
        log.info("%s: %d cells, %s matrix, chunks of %d rows, normalisation %s",
                 plan.path, plan.n_obs, matrix.encoding, rows_per_chunk, plan.normalization_applied)
        progress = tqdm(total=plan.n_obs, desc=plan.path.name, unit="cells", file=sys.stderr, mininterval=1.0, leave=False)
        for start, rows in matrix.iter_chunks(rows_per_chunk):
            stop = start + rows.shape[0]
            expression = normalise_chunk(rows, plan, n_genes, matrix.label, start)
            del rows
            _dispatch_chunk(plan, writers, h5ad.obs_names(start, stop), expression, start, stop)
            if sum(w.buffered_rows for w in writers.values()) > MAX_BUFFERED_ROWS_FACTOR * rows_per_chunk:
                for writer in writers.values():
                    writer.flush()
            progress.update(stop - start)
            _exit_if_terminated()
        progress.close()
    for writer in writers.values():
        writer.close()


def _dispatch_chunk(plan: FilePlan, writers, cell_ids, expression, start: int, stop: int) -> None:
    """Hand each slice its rows of the chunk (cells with invalid coordinates left out)."""
    keep = plan.keep[start:stop]
    codes = plan.slice_codes[start:stop]
    if keep.all() and codes[0] == codes[-1] and (codes == codes[0]).all():  # common case: one slice, all valid
        groups = [(int(codes[0]), slice(None))]
    else:
        kept_rows = np.flatnonzero(keep)
        kept_codes = codes[kept_rows]
        order = np.argsort(kept_codes, kind="stable")
        bounds = np.flatnonzero(np.diff(kept_codes[order])) + 1
        groups = [(int(kept_codes[part[0]]), kept_rows[part]) for part in np.split(order, bounds) if len(part)]
    for code, rows in groups:
        writers[code].append(CellBatch(
            cell_ids=cell_ids[rows],
            coords=plan.coords[start:stop][rows],
            cell_type_codes=plan.cell_type_codes[start:stop][rows],
            expression=expression[rows],
        ))


# ============================================================================================
# manifest entries
# ============================================================================================
def source_entry(plan: FilePlan, genes: list[str]) -> dict:
    mask = np.zeros(len(genes), dtype=bool)
    mask[plan.gene_match.target_positions] = True
    return {
        "path": str(plan.path),
        "size": plan.path.stat().st_size,
        "sha256": sha256_file(plan.path),
        "n_obs": plan.n_obs,
        "dropped_invalid_positions": plan.n_dropped,
        "unmatched_genes": plan.gene_match.unmatched,
        "case_insensitive_matches": [list(pair) for pair in plan.gene_match.case_insensitive],
        "measured_genes": [g for g, m in zip(genes, mask) if m],
        "normalization_applied": plan.normalization_applied,
        "slices": [plan.slice_ids[c] for c in np.unique(plan.slice_codes)],
    }


def slice_entries(plan: FilePlan, platform: str) -> dict[str, dict]:
    entries = {}
    for code in np.unique(plan.slice_codes):
        rows = (plan.slice_codes == code) & plan.keep
        coords = plan.coords[rows]
        entries[plan.slice_ids[code]] = {
            "platform": platform,
            "file_key": slice_file_key(plan.slice_ids[code]),
            "source": str(plan.path),
            "n_cells": int(rows.sum()),
            "n_dims": plan.n_dims,
            "bounds": {"min": coords.min(axis=0).astype(float).tolist(), "max": coords.max(axis=0).astype(float).tolist()},
            "has_cell_type": bool((plan.cell_type_codes[rows] >= 0).any()),
            "covariates": plan.covariates.get(plan.slice_ids[code], {}),
            "dropped_invalid_positions": int(((plan.slice_codes == code) & ~plan.keep).sum()),
        }
    return entries


def platform_entry(plans: list[FilePlan], genes: list[str], opts: Options, sources: list[dict]) -> dict:
    # measured on the platform = measured in every one of its files (see manifest merging)
    measured = set(genes)
    for source in sources:
        measured &= set(source["measured_genes"])
    applied = {p.normalization_applied for p in plans}
    normalization = {"requested": opts.normalization, "applied": applied.pop() if len(applied) == 1 else "mixed"}
    if normalization["applied"] in (APPLIED_LIBRARY_SIZE, "mixed"):
        normalization["target_sum"] = TARGET_SUM
    return {
        "measured_genes": [g for g in genes if g in measured],
        "normalization": normalization,
        "position_key": opts.position_key,
        "slice_key": opts.slice_key,
        "cell_type_key": opts.cell_type_key,
        "layer": opts.layer or "X",
        "sources": sources,
    }


# ============================================================================================
# the run
# ============================================================================================
def validate_inputs(files: list[Path], opts: Options) -> tuple[list[str], list[FilePlan]]:
    """Check every file before anything is written; return the gene list and one plan per file."""
    for path in files:  # cheap checks first, so a typo in the last file fails at once
        H5adFile(path).close()
    genes = resolve_gene_list(opts.gene_list, files)
    plans = [plan_file(path, genes, opts) for path in files]
    owner: dict[str, Path] = {}
    for plan in plans:
        for code in np.unique(plan.slice_codes):
            slice_id = plan.slice_ids[code]
            if slice_id in owner:
                raise InputError(f"slice id {slice_id!r} is claimed by two files: {owner[slice_id]} and {plan.path}")
            owner[slice_id] = plan.path
    file_keys_to_slice_ids(owner)  # shard files are named by file key: two slices must not share one
    for plan in plans:
        if plan.gene_match.unmatched:
            log.warning("%s: %d of %d genes of the list are not in its panel (zeros, masked as unmeasured): %s",
                        plan.path, len(plan.gene_match.unmatched), len(genes), ", ".join(plan.gene_match.unmatched))
        for wanted, found in plan.gene_match.case_insensitive:
            log.info("%s: gene %s matched %s ignoring case", plan.path, wanted, found)
    return genes, plans


def run_preprocess(files: list[Path], opts: Options) -> dict:
    genes, plans = validate_inputs(files, opts)
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(opts.out_dir)
    run_writers = RunWriters(opts, len(genes))
    manifest = {"format_version": FORMAT_VERSION, "package_version": __version__, "dataset": opts.dataset,
                "genes": genes, "platforms": {}, "slices": {}}
    try:
        for plan in plans:
            write_file_shards(plan, run_writers.for_file(plan), opts, len(genes))
        sources = [source_entry(plan, genes) for plan in plans]
        for plan in plans:
            manifest["slices"].update(slice_entries(plan, opts.platform))
        manifest["platforms"][opts.platform] = platform_entry(plans, genes, opts, sources)
        _exit_if_terminated()
        # An old manifest must not outlive the shards it lists: remove it before renaming shards,
        # so that a kill between the renames leaves no manifest rather than a wrong one.
        opts.manifest_path.unlink(missing_ok=True)
        for slice_id, shards in run_writers.commit(relative_to=opts.manifest_path.parent).items():
            manifest["slices"][slice_id]["shards"] = shards
        write_manifest(opts.manifest_path, manifest)
    except BaseException:
        run_writers.abort()
        raise
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE.h5ad", help="h5ad files of one platform")
    parser.add_argument("--platform", required=True, help="platform name recorded in shards and manifest")
    parser.add_argument("--out", required=True, type=Path, help="directory for the shards (and manifest.json)")
    parser.add_argument("--manifest", type=Path, default=None, help="write the manifest here instead of OUT/manifest.json")
    parser.add_argument("--dataset", default=None, help="dataset name recorded in the manifest (default: name of OUT)")
    parser.add_argument("--gene-list", default=None, metavar="FILE|intersection|union",
                        help="gene list file (one symbol per line) or intersection/union of the files' panels (default: intersection)")
    parser.add_argument("--position-key", default="spatial", help="obsm key of the coordinates (default: spatial)")
    parser.add_argument("--slice-key", default=None, help="obs key of the slice id (default: one slice per file, named after it)")
    parser.add_argument("--cell-type-key", default=None, help="obs key of cell types (default: none)")
    parser.add_argument("--layer", default=None, help="layer holding expression (default: X)")
    z = parser.add_mutually_exclusive_group()
    z.add_argument("--z-key", default=None, help="obs key of z for 2-D coordinates")
    z.add_argument("--z-value", type=float, default=0.0, help="z of every cell for 2-D coordinates (default: 0)")
    parser.add_argument("--normalization", choices=NORMALIZATIONS, default="auto",
                        help="auto: integer counts -> library size (1e4) + log1p, else left as is (default: auto)")
    parser.add_argument("--on-invalid", choices=("drop", "error"), default="drop",
                        help="cells with NaN/inf coordinates: drop and count them (default) or fail")
    parser.add_argument("--slice-covariates", default=None, metavar="KEY[,KEY]",
                        help="obs keys holding one value per slice (condition, genotype, region, time point): recorded in "
                             "the manifest; the model can be conditioned on them (model.slice_covariates)")
    parser.add_argument("--slabs", default=None, metavar="AXIS:COUNT",
                        help="cut each slice into COUNT slabs of equal cell count along AXIS (x, y or z), named "
                             "<slice>_slab0.. from the low end: serial sections of one volume in one frame (e.g. x:4)")
    parser.add_argument("--max-cells-per-shard", type=int, default=DEFAULT_MAX_CELLS_PER_SHARD)
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="rows read at a time (default: 10000; fewer for wide panels)")


def _positive(value: int, option: str) -> int:
    if value < 1:
        raise InputError(f"{option} must be a positive integer, got {value}")
    return value


# The SystemExit raised by the handler is swallowed when the signal lands inside a finaliser (a weakref
# callback or __del__ prints "Exception ignored in ..." and carries on), so the signal is also remembered
# and checked at every chunk and before anything is committed.
_received_signal: int | None = None


def _exit_on_sigterm(signum, frame):
    global _received_signal
    _received_signal = signum
    raise SystemExit(128 + signum)


def _exit_if_terminated() -> None:
    if _received_signal is not None:
        raise SystemExit(128 + _received_signal)


def main(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    opts = Options(
        platform=args.platform, out_dir=out_dir,
        manifest_path=Path(args.manifest) if args.manifest else out_dir / MANIFEST_NAME,
        dataset=args.dataset or out_dir.resolve().name, gene_list=args.gene_list,
        position_key=args.position_key, slice_key=args.slice_key, cell_type_key=args.cell_type_key,
        layer=args.layer, z_key=args.z_key, z_value=args.z_value, normalization=args.normalization,
        on_invalid=args.on_invalid, max_cells_per_shard=_positive(args.max_cells_per_shard, "--max-cells-per-shard"),
        chunk_size=_positive(args.chunk_size, "--chunk-size"), slabs=parse_slabs(args.slabs),
        slice_covariates=tuple(k.strip() for k in (args.slice_covariates or "").split(",") if k.strip()),
    )
    # Snakemake cancels jobs with SIGTERM: turn it into SystemExit so the clean-up of temporaries runs
    global _received_signal
    _received_signal = None
    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can handlers be set
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    try:
        manifest = run_preprocess([Path(f) for f in args.files], opts)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    n_cells = sum(s["n_cells"] for s in manifest["slices"].values())
    log.info("wrote %d slice(s), %d cells, %d genes -> %s", len(manifest["slices"]), n_cells, len(manifest["genes"]), opts.manifest_path)
    return 0


# ============================================================================================
# gene-list command
# ============================================================================================
def add_gene_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE.h5ad", help="h5ad files whose panels are combined or checked")
    parser.add_argument("--mode", required=True, metavar="FILE|intersection|union",
                        help="a gene list file to normalise and copy, or intersection/union of the files' panels")
    parser.add_argument("--out", required=True, type=Path, help="gene list to write, one symbol per line")


def gene_list_main(args: argparse.Namespace) -> int:
    files = [Path(f) for f in args.files]
    genes = resolve_gene_list(args.mode, files)
    for path in files:  # a given list must reach every panel, or that file would be all zeros
        match = match_genes(genes, _unique_var_names(path), path)
        if match.unmatched:
            log.warning("%s: %d of %d genes not in its panel: %s", path, len(match.unmatched), len(genes), ", ".join(match.unmatched))
    atomic_write_text(args.out, "".join(f"{g}\n" for g in genes))
    log.info("wrote %d genes to %s", len(genes), args.out)
    return 0
