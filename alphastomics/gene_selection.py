"""Command ``gene-list``: the dataset's fixed gene list, from a file, the files' panels
(intersection or union), or the panels' most variable genes on the training slices.

``highly_variable:N`` is for gene-rich platforms (Visium, Stereo-seq, Slide-seq, ST: 10^4 genes),
where the whole panel would cost the model width and time for genes that mostly hold noise. The
genes are chosen as scanpy's ``sc.pp.highly_variable_genes(flavor="seurat", n_top_genes=N)``
chooses them (dispersion of the library-size normalised values, normalised within 20 bins of mean
expression), computed from per-gene sums streamed over every file's chunks, so a file larger than
memory is read once, chunk by chunk, as preprocessing reads it. Only the cells of the training
slices count: the held-out (test and validation) slices are named on the command line and left
out, so the choice cannot look at what the model is later scored on. What was chosen, how and on
which slices is written to a record that the manifest carries (``gene_selection``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from alphastomics.errors import InputError
from alphastomics.io.files import atomic_write_text
from alphastomics.io.h5ad import H5adFile
from alphastomics.preprocess import add_arguments as add_preprocess_arguments
from alphastomics.preprocess import chunk_rows, normalise_chunk, options_from_args
from alphastomics.preprocess_inputs import (
    APPLIED_LIBRARY_SIZE,
    HIGHLY_VARIABLE,
    FilePlan,
    Options,
    derive_gene_list,
    match_genes,
    parse_highly_variable,
    plan_file,
    report_gene_match,
    resolve_gene_list,
    unique_var_names,
)

log = logging.getLogger(__name__)

MEAN_BINS = 20  # scanpy's default n_bins


class GeneMoments:
    """Per-gene count, sum and sum of squares of expm1(normalised expression) over the cells added."""

    def __init__(self, n_genes: int):
        self.n_cells = 0
        self.total = np.zeros(n_genes, dtype=np.float64)
        self.total_sq = np.zeros(n_genes, dtype=np.float64)

    def add(self, values: np.ndarray) -> None:
        linear = np.expm1(values.astype(np.float64))
        self.n_cells += linear.shape[0]
        self.total += linear.sum(axis=0)
        self.total_sq += (linear ** 2).sum(axis=0)

    def mean_and_variance(self) -> tuple[np.ndarray, np.ndarray]:
        mean = self.total / self.n_cells
        # unbiased (ddof=1), as scanpy's; clipped at 0 against rounding of nearly constant genes
        variance = np.maximum(self.total_sq - self.n_cells * mean ** 2, 0.0) / max(self.n_cells - 1, 1)
        return mean, variance


def normalised_dispersions(mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Seurat's normalised dispersion per gene, as scanpy's ``flavor='seurat'`` computes it:
    log(variance / mean) z-scored within 20 equal-width bins of log1p(mean); a gene alone in its bin
    gets 1; genes with no dispersion get NaN (never chosen)."""
    mean = np.where(mean == 0, 1e-12, mean)
    dispersion = variance / mean
    dispersion[dispersion == 0] = np.nan
    frame = pd.DataFrame({"dispersion": np.log(dispersion), "mean_bin": pd.cut(np.log1p(mean), bins=MEAN_BINS)})
    grouped = frame.groupby("mean_bin", observed=True)["dispersion"]
    bin_mean = grouped.transform("mean")
    bin_std = grouped.transform("std")
    alone = bin_std.isna()  # scanpy: a gene alone in its bin has normalised dispersion 1
    bin_std[alone], bin_mean[alone] = frame["dispersion"][alone], 0.0
    return ((frame["dispersion"] - bin_mean) / bin_std).to_numpy()


def training_moments(plan: FilePlan, opts: Options, n_genes: int, held_out: set[str], moments: GeneMoments) -> None:
    """Add the file's training cells (slices not in ``held_out``, coordinates valid) to ``moments``."""
    applied = plan.normalization_applied
    if applied not in (APPLIED_LIBRARY_SIZE, "log1p"):
        log.warning("%s: values are used as they are (normalisation %s); highly variable genes assume "
                    "log-normalised values", plan.path, applied)
    training_code = np.array([s not in held_out for s in plan.slice_ids], dtype=bool)
    with H5adFile(plan.path) as h5ad:
        matrix = h5ad.matrix(opts.layer)
        progress = tqdm(total=plan.n_obs, desc=plan.path.name, unit="cells", file=sys.stderr, mininterval=1.0, leave=False)
        for start, rows in matrix.iter_chunks(chunk_rows(opts, plan, n_genes)):
            stop = start + rows.shape[0]
            values = normalise_chunk(rows, plan, n_genes, matrix.label, start)
            use = plan.keep[start:stop] & training_code[plan.slice_codes[start:stop]]
            if use.any():
                if (values[use] < 0).any():
                    raise InputError(f"{plan.path}: negative expression values (scaled data?); highly_variable needs "
                                     "counts or log-normalised values (give --layer of the counts)")
                moments.add(values[use])
            progress.update(stop - start)
        progress.close()


def highly_variable_genes(files: list[Path], n_top: int, held_out: list[str], options: dict[Path, Options]
                          ) -> tuple[list[str], dict]:
    """The ``n_top`` most variable genes of the files' common panel on their training cells, in panel
    order, and the record of the choice."""
    candidates = derive_gene_list(files, "intersection")
    moments = GeneMoments(len(candidates))
    held = set(held_out)
    seen_slices: set[str] = set()
    for path in files:
        opts = options.get(path) or Options(platform="unknown", out_dir=Path("."), manifest_path=Path("."), dataset="")
        plan = plan_file(path, candidates, opts)
        seen_slices.update(plan.slice_ids)
        training_moments(plan, opts, len(candidates), held, moments)
    unknown = held - seen_slices
    if unknown:
        raise InputError(f"held-out slices not in any of {', '.join(map(str, files))}: {sorted(unknown)}")
    if moments.n_cells < 2:
        raise InputError(f"{', '.join(map(str, files))}: fewer than 2 cells in the training slices; "
                         "highly variable genes cannot be chosen")
    mean, variance = moments.mean_and_variance()
    score = normalised_dispersions(mean, variance)
    if n_top >= len(candidates):
        log.warning("highly_variable:%d asks for at least the %d genes the panels share: all of them kept", n_top, len(candidates))
        chosen = np.arange(len(candidates))
    else:
        ranked = np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")
        chosen = np.sort(ranked[:n_top])
    record = {
        "mode": f"{HIGHLY_VARIABLE}:{n_top}",
        "method": "scanpy flavor='seurat' (normalised dispersion in 20 bins of mean), pooled over the training cells",
        "candidate_genes": len(candidates),
        "chosen_genes": int(len(chosen)),
        "training_slices": sorted(seen_slices - held),
        "held_out_slices": sorted(held),
        "training_cells": moments.n_cells,
        "normalised_dispersion": {candidates[i]: round(float(score[i]), 4) for i in chosen if np.isfinite(score[i])},
    }
    return [candidates[i] for i in chosen], record


# -- command ----------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", type=Path, metavar="FILE.h5ad", help="h5ad files whose panels are combined or checked")
    parser.add_argument("--mode", required=True, metavar="FILE|intersection|union|highly_variable:N",
                        help="a gene list file to normalise and copy, intersection/union of the files' panels, or the N most "
                             "variable genes of their common panel on the training slices")
    parser.add_argument("--out", required=True, type=Path, help="gene list to write, one symbol per line")
    parser.add_argument("--record", type=Path, default=None,
                        help="also write how the list was made (JSON), for the manifest's gene_selection")
    parser.add_argument("--held-out-slices", nargs="*", default=[], metavar="SLICE",
                        help="highly_variable: slices whose cells are left out of the choice (test and validation)")
    parser.add_argument("--file-options", default=None, metavar="JSON",
                        help="highly_variable: {file: [preprocess options]} (slice key, layer, normalisation, slabs ...), "
                             "so that slices and values are read as preprocessing reads them")


def _file_options(text: str | None, files: list[Path]) -> dict[Path, Options]:
    if not text:
        return {}
    try:
        given = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"--file-options: not JSON ({err})") from None
    parser = argparse.ArgumentParser(prog="alphastomics gene-list --file-options", add_help=False)
    add_preprocess_arguments(parser)
    options = {}
    for name, arguments in given.items():
        path = Path(name)
        if path not in files:
            raise InputError(f"--file-options: {name} is not among the files given")
        args = parser.parse_args([name, "--platform", "gene-list", "--out", ".", *map(str, arguments)])
        options[path] = options_from_args(args)
    return options


def main(args: argparse.Namespace) -> int:
    files = [Path(f) for f in args.files]
    n_top = parse_highly_variable(args.mode)
    if n_top is not None:
        genes, record = highly_variable_genes(files, n_top, args.held_out_slices, _file_options(args.file_options, files))
    else:
        genes = resolve_gene_list(args.mode, files)
        record = {"mode": args.mode, "chosen_genes": len(genes)}
    for path in files:  # a given list must reach every panel, or that file would be all zeros
        report_gene_match(match_genes(genes, unique_var_names(path), path), len(genes), path)
    atomic_write_text(args.out, "".join(f"{g}\n" for g in genes))
    if args.record is not None:
        atomic_write_text(args.record, json.dumps(record, indent=1) + "\n")
    log.info("wrote %d genes to %s (%s)", len(genes), args.out, record["mode"])
    return 0
