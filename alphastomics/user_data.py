"""A user's own data, read for a trained model: any h5ad (dissociated cells with no coordinates,
coordinates with no genes, a panel that lacks genes) or a CSV/TSV of coordinates, matched to the
model's gene list and normalised the way its training data were.

- Genes are matched to the checkpoint's list exactly, then ignoring case (as preprocessing does);
  genes of the file the model does not know, and genes the model knows but the file lacks, are
  reported in the log and in ``uns`` of the output. Genes the file lacks are unmeasured.
- Normalisation follows the checkpoint's training data (library size + log1p for counts, log1p,
  or none) unless the user says otherwise; library sizes are taken over all genes of the file.
- ``slice_key`` samples each slice of the file on its own; by default all cells are one slice.

Every problem is an InputError naming the file and the problem; nothing is written here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from alphastomics.errors import InputError
from alphastomics.io.h5ad import coordinate_columns
from alphastomics.io.shards import SliceData
from alphastomics.preprocess import APPLIED_LIBRARY_SIZE, TARGET_SUM, match_genes
from alphastomics.preprocess_inputs import check_cell_ids

log = logging.getLogger(__name__)

NORMALIZATIONS = ("checkpoint", "library_size_log1p", "log1p", "none")


@dataclass
class UserData:
    """Slices of a user's file on the model's gene list, and what was matched."""

    slices: list[SliceData]
    has_coordinates: bool
    has_expression: bool
    report: dict = field(default_factory=dict)  # matched/unmatched genes, normalisation: goes to uns


def read_table_of_coordinates(path: Path) -> np.ndarray:
    """A CSV or TSV of x, y[, z] (header optional) -> (n, 2 or 3) float array."""
    try:
        table = pd.read_csv(path, sep=None, engine="python")
    except Exception as err:  # noqa: BLE001 - pandas raises many types for a bad file
        raise InputError(f"{path}: not a readable CSV/TSV ({type(err).__name__}: {err})") from None
    lower = [str(c).strip().lower() for c in table.columns]
    if not {"x", "y"} <= set(lower):
        # no header naming x and y: the first row was data
        table = pd.read_csv(path, sep=None, engine="python", header=None)
        lower = ["x", "y", "z"][: table.shape[1]] if table.shape[1] in (2, 3) else lower
        table.columns = lower
    columns = [c for c in ("x", "y", "z") if c in lower]
    if len(columns) < 2 or (table.shape[1] > 3 and not {"x", "y"} <= set(lower)):
        raise InputError(f"{path}: expected columns x, y and optionally z, found {', '.join(map(str, table.columns))}")
    values = table[[table.columns[lower.index(c)] for c in columns]]
    numeric = values.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().any(axis=1) | ~np.isfinite(numeric.to_numpy(dtype=np.float64, na_value=np.nan)).all(axis=1)
    if bad.any():
        rows = ", ".join(str(i + 2) for i in np.flatnonzero(bad.to_numpy())[:5])
        raise InputError(f"{path}: {int(bad.sum())} row(s) with missing or non-numeric coordinates (e.g. line {rows})")
    if len(numeric) == 0:
        raise InputError(f"{path}: no coordinates")
    return numeric.to_numpy(dtype=np.float64)


def _normalise(matrix, applied: str) -> np.ndarray:
    dense = matrix.toarray() if sp.issparse(matrix) else np.asarray(matrix)
    dense = dense.astype(np.float64)
    if not np.isfinite(dense).all():
        raise ValueError("expression holds NaN or infinite values")
    if applied in (APPLIED_LIBRARY_SIZE, "log1p") and dense.size and dense.min() < 0:
        raise ValueError(f"negative values (min {dense.min():g}) where counts are expected; use --normalization none")
    if applied == APPLIED_LIBRARY_SIZE:
        totals = dense.sum(1, keepdims=True)
        dense = np.log1p(np.divide(dense * TARGET_SUM, totals, out=np.zeros_like(dense), where=totals > 0))
    elif applied == "log1p":
        dense = np.log1p(dense)
    return dense.astype(np.float32)


def read_user_h5ad(path: str | Path, genes: list[str], training_normalization: str, normalization: str = "checkpoint",
                   slice_key: str | None = None, position_key: str = "spatial", cell_type_key: str | None = None,
                   dims: int | None = None, platform: str = "user") -> UserData:
    """The slices of one h5ad on the gene list ``genes``.

    A file with no ``obsm[position_key]`` has no coordinates (dissociated cells): its slices get
    zeros and ``n_dims`` = ``dims``; a file with no genes (n_vars 0) has no expression.
    """
    import anndata as ad

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        adata = ad.read_h5ad(path)
    except Exception as err:  # noqa: BLE001 - h5py/anndata raise many types
        raise InputError(f"{path}: not a readable h5ad file ({type(err).__name__}: {err})") from None
    if adata.n_obs == 0:
        raise InputError(f"{path}: the file holds no cells (obs is empty)")
    report: dict = {"source": str(path)}

    has_expression = adata.n_vars > 0
    expression = np.zeros((adata.n_obs, len(genes)), dtype=np.float32)
    gene_mask = np.zeros(len(genes), dtype=bool)
    if has_expression:
        var_names = [str(v) for v in adata.var_names]
        if len(set(var_names)) != len(var_names):
            raise InputError(f"{path}: duplicated gene names in var")
        try:
            match = match_genes(genes, var_names, path)
        except InputError:
            match = None
        if match is None:
            has_expression = False
            report["genes_matched"] = 0
            log.warning("%s: none of its %d genes is one the model knows: treated as a file without expression", path, len(var_names))
        else:
            applied = training_normalization if normalization == "checkpoint" else normalization
            try:
                values = _normalise(adata.X, applied)
            except ValueError as err:
                raise InputError(f"{path}: {err}") from None
            expression[:, match.target_positions] = values[:, match.source_columns]
            gene_mask[match.target_positions] = True
            known = {var_names[c] for c in match.source_columns}
            report.update({
                "normalization": applied,
                "genes_matched": int(gene_mask.sum()),
                "genes_matched_ignoring_case": [f"{a}={b}" for a, b in match.case_insensitive],
                "genes_missing_from_file": list(match.unmatched),
                "genes_ambiguous_in_file": [f"{gene}={'/'.join(spellings)}" for gene, spellings in match.ambiguous],
                "genes_unknown_to_model": [g for g in var_names if g not in known],
            })
            log.info("%s: %d of the model's %d genes matched (%d ignoring case); %d missing (unmeasured); "
                     "%d genes of the file unknown to the model; normalisation %s", path, gene_mask.sum(), len(genes),
                     len(match.case_insensitive), len(match.unmatched), len(report["genes_unknown_to_model"]), applied)
            if match.absent:
                log.info("%s: genes the model knows but the file lacks: %s", path, ", ".join(match.absent))
            for gene, spellings in match.ambiguous:
                log.warning("%s: gene %s of the model matches %s of the file ignoring case: ambiguous, left unmeasured",
                            path, gene, ", ".join(spellings))

    has_coordinates = position_key in adata.obsm
    coords = np.zeros((adata.n_obs, 3), dtype=np.float32)
    n_dims = dims
    if has_coordinates:
        raw = adata.obsm[position_key]
        label = f"{path}: obsm[{position_key!r}]"
        raw = coordinate_columns(raw, label) if isinstance(raw, pd.DataFrame) else np.asarray(raw)
        if raw.dtype.kind not in "fiu":
            raise InputError(f"{label} is not numeric (dtype {raw.dtype})")
        raw = raw.astype(np.float64)
        if raw.ndim != 2 or raw.shape[1] not in (2, 3):
            raise InputError(f"{path}: obsm[{position_key!r}] has shape {raw.shape}; expected (n_obs, 2) or (n_obs, 3)")
        if not np.isfinite(raw).all():
            raise InputError(f"{path}: obsm[{position_key!r}] holds {int((~np.isfinite(raw)).any(1).sum())} cell(s) with NaN or infinite coordinates")
        coords[:, : raw.shape[1]] = raw
        n_dims = raw.shape[1]
    if not has_coordinates and not has_expression:
        raise InputError(f"{path}: neither coordinates (obsm[{position_key!r}]) nor any gene the model knows: nothing to start from")

    if slice_key is not None:
        if slice_key not in adata.obs:
            raise InputError(f"{path}: obs[{slice_key!r}] (--slice-key) not found; obs columns: {', '.join(map(str, adata.obs.columns))}")
        labels = adata.obs[slice_key].astype(str).to_numpy()
    else:
        labels = np.full(adata.n_obs, path.stem, dtype=object)
    cell_types = None
    if cell_type_key is not None:
        if cell_type_key not in adata.obs:
            raise InputError(f"{path}: obs[{cell_type_key!r}] (--cell-type-key) not found")
        column = adata.obs[cell_type_key]
        cell_types = np.array([None if pd.isna(v) else str(v) for v in column], dtype=object)
    codes, slice_ids = pd.factorize(pd.Series(labels), sort=False)
    check_cell_ids(adata.obs_names, codes, [str(s) for s in slice_ids], path)
    slices = []
    for slice_id in pd.unique(labels):
        rows = np.flatnonzero(labels == slice_id)
        slices.append(SliceData(
            slice_id=str(slice_id), platform=platform, cell_ids=adata.obs_names[rows].to_numpy().astype(str),
            coords=coords[rows], n_dims=int(n_dims or 2), expression=expression[rows], gene_mask=gene_mask.copy(),
            cell_types=None if cell_types is None else cell_types[rows], genes=list(genes),
        ))
    return UserData(slices, has_coordinates, has_expression, report)


def coordinates_as_slice(path: str | Path, genes: list[str], platform: str = "user") -> UserData:
    """A CSV/TSV of coordinates as one slice with no expression."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    values = read_table_of_coordinates(path)
    coords = np.zeros((len(values), 3), dtype=np.float32)
    coords[:, : values.shape[1]] = values
    data = SliceData(slice_id=path.stem, platform=platform, cell_ids=np.array([f"cell{i}" for i in range(len(values))]),
                     coords=coords, n_dims=values.shape[1], expression=np.zeros((len(values), len(genes)), np.float32),
                     gene_mask=np.zeros(len(genes), bool), cell_types=None, genes=list(genes))
    return UserData([data], True, False, {"source": str(path)})


def empty_slice(num_cells: int, genes: list[str], dims: int, platform: str = "virtual") -> UserData:
    """``joint`` from nothing: a virtual slice of ``num_cells`` cells."""
    if num_cells < 2:
        raise InputError(f"--num-cells must be at least 2, got {num_cells}")
    data = SliceData(slice_id="virtual", platform=platform, cell_ids=np.array([f"cell{i}" for i in range(num_cells)]),
                     coords=np.zeros((num_cells, 3), np.float32), n_dims=dims,
                     expression=np.zeros((num_cells, len(genes)), np.float32), gene_mask=np.zeros(len(genes), bool),
                     cell_types=None, genes=list(genes))
    return UserData([data], False, False, {"num_cells": num_cells})
