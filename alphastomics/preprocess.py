"""Command ``preprocess``: h5ad files of one platform -> Parquet shards + manifest (the gene list
itself is made by ``gene-list``, alphastomics.gene_selection).

Every input is validated (file, keys, coordinates, genes, slices, kind of values) before anything
is written (alphastomics.preprocess_inputs). Expression is then streamed in row chunks: normalised, mapped onto the fixed gene list
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
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from alphastomics import __version__
from alphastomics.errors import InputError
from alphastomics.io.files import remove_stale_temp_files, sha256_file
from alphastomics.io.h5ad import H5adFile
from alphastomics.io.manifest import FORMAT_VERSION, MANIFEST_NAME, write_manifest
from alphastomics.io.names import file_keys_to_slice_ids, slice_file_key
from alphastomics.io.shards import DEFAULT_MAX_CELLS_PER_SHARD, BackgroundWriter, CellBatch, SliceShardWriter
# match_genes and slice_ids_in_file are read from here by other modules and the workflow
from alphastomics.preprocess_inputs import (  # noqa: F401
    APPLIED_LIBRARY_SIZE,
    DEFAULT_CHUNK_SIZE,
    FilePlan,
    Options,
    check_values,
    match_genes,
    parse_slabs,
    plan_file,
    report_gene_match,
    resolve_gene_list,
    slice_ids_in_file,
)

log = logging.getLogger(__name__)

NORMALIZATIONS = ("auto", "log1p", "none")
TARGET_SUM = 1e4
CHUNK_BYTES_BUDGET = 32 << 20  # one chunk's dense matrices stay around this size
MAX_BUFFERED_ROWS_FACTOR = 2  # rows buffered across slice writers, in chunks, before a forced flush


# ============================================================================================
# expression
# ============================================================================================
def normalise_chunk(rows, plan: FilePlan, n_genes: int, label: str, start: int) -> np.ndarray:
    """(n, n_genes) float32 on the gene list from the file's rows (dense ndarray or CSR).

    Columns are selected before the element-wise work, and for sparse rows that work touches only
    the stored values (log1p(0) = 0), so its cost follows the non-zeros of the listed genes.
    ``rows`` is consumed: it may be modified in place.
    """
    applied = plan.normalization_applied
    sparse = sp.issparse(rows)
    check_values(rows.data if sparse else rows, label, start, counts_expected=applied != "none")
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
        "ambiguous_genes": {gene: spellings for gene, spellings in plan.gene_match.ambiguous},
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
        report_gene_match(plan.gene_match, len(genes), plan.path)
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


def options_from_args(args: argparse.Namespace) -> Options:
    """The preprocessing options of a parsed command line (also how ``gene-list`` reads a file's options)."""
    out_dir = Path(args.out)
    return Options(
        platform=args.platform, out_dir=out_dir,
        manifest_path=Path(args.manifest) if args.manifest else out_dir / MANIFEST_NAME,
        dataset=args.dataset or out_dir.resolve().name, gene_list=args.gene_list,
        position_key=args.position_key, slice_key=args.slice_key, cell_type_key=args.cell_type_key,
        layer=args.layer, z_key=args.z_key, z_value=args.z_value, normalization=args.normalization,
        on_invalid=args.on_invalid, max_cells_per_shard=_positive(args.max_cells_per_shard, "--max-cells-per-shard"),
        chunk_size=_positive(args.chunk_size, "--chunk-size"), slabs=parse_slabs(args.slabs),
        slice_covariates=tuple(k.strip() for k in (args.slice_covariates or "").split(",") if k.strip()),
    )


def main(args: argparse.Namespace) -> int:
    opts = options_from_args(args)
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
