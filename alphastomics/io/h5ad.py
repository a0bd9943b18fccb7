"""Backed, chunked reading of h5ad files with h5py.

h5py is used directly rather than anndata's backed mode: it lets us read a row range of a CSR
matrix (indptr slice, then one contiguous slice of data/indices) without anndata building index
objects per call, read obs columns one at a time, and keep peak memory proportional to one chunk,
not to the file. anndata's ``read_elem`` decodes the small structured elements (categoricals,
string arrays, nullable columns) so every encoding anndata writes is understood.

Dense matrices come back as float32 numpy arrays, sparse ones (CSR or CSC on disk) as
``scipy.sparse.csr_matrix`` of the chunk's rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from alphastomics.errors import InputError

try:  # anndata >= 0.11
    from anndata.io import read_elem
except ImportError:  # pragma: no cover - older anndata
    from anndata.experimental import read_elem

log = logging.getLogger(__name__)

SPARSE_ENCODINGS = ("csr_matrix", "csc_matrix")
ZARR_MARKERS = (".zgroup", "zarr.json")


def _attr_str(node, name: str, default: str = "") -> str:
    value = node.attrs.get(name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


class H5adFile:
    """One h5ad file opened read-only; use as a context manager.

    Opening checks only that the file exists and is an HDF5 file with the groups of an AnnData
    (obs, var); everything else is checked when asked for, with a message naming the file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: file not found")
        if not self.path.is_file():
            if self.path.is_dir() and (self.path.suffix == ".zarr" or any((self.path / m).exists() for m in ZARR_MARKERS)):
                raise InputError(f"{self.path}: a zarr store, not an h5ad file; write the table as h5ad first, e.g. "
                                 "adata.write_h5ad('cells.h5ad') (SpatialData: sdata.tables['table'].write_h5ad(...))")
            raise InputError(f"{self.path}: not a file")
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as err:
            raise InputError(f"{self.path}: not an h5ad file (cannot be opened as HDF5: {err})") from None
        missing = [g for g in ("obs", "var") if g not in self._h5]
        if missing:
            self._h5.close()
            raise InputError(f"{self.path}: not an h5ad file (HDF5 without AnnData group(s) {', '.join(missing)})")
        self._var_names: np.ndarray | None = None

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> "H5adFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._h5.id.valid:
            self._h5.close()

    # -- obs / var ---------------------------------------------------------------------------
    def _index_dataset(self, group_name: str):
        group = self._h5[group_name]
        index_key = _attr_str(group, "_index", "_index")
        if index_key not in group:
            raise InputError(f"{self.path}: {group_name} has no index column {index_key!r}")
        return group[index_key]

    @property
    def n_obs(self) -> int:
        node = self._index_dataset("obs")
        return int((node if isinstance(node, h5py.Dataset) else node["values"]).shape[0])

    @property
    def var_names(self) -> np.ndarray:
        """Gene symbols as a numpy array of str (read once, small)."""
        if self._var_names is None:
            self._var_names = np.asarray(read_elem(self._index_dataset("var")), dtype=object).astype(str)
        return self._var_names

    def obs_names(self, start: int, stop: int) -> np.ndarray:
        """Cell ids of rows [start, stop), read without loading the whole index."""
        node = self._index_dataset("obs")
        if isinstance(node, h5py.Dataset) and node.dtype.kind in ("O", "S"):
            return np.asarray(node.asstr()[start:stop], dtype=object)
        if isinstance(node, h5py.Group) and {"values", "mask"} <= set(node.keys()):  # nullable strings
            names = np.asarray(node["values"].asstr()[start:stop], dtype=object)
            names[np.asarray(node["mask"][start:stop], dtype=bool)] = ""  # a missing id is an empty one
            return names
        return np.asarray(read_elem(node), dtype=object)[start:stop].astype(str).astype(object)

    def obs_keys(self) -> list[str]:
        return self._columns("obs")

    def var_keys(self) -> list[str]:
        return self._columns("var")

    def _columns(self, group_name: str) -> list[str]:
        index_key = _attr_str(self._h5[group_name], "_index", "_index")
        return [k for k in self._h5[group_name].keys() if k != index_key and k != "__categories"]

    def var_column(self, key: str) -> np.ndarray:
        """A var column as an array of objects (small: one value a gene)."""
        return np.asarray(read_elem(self._h5["var"][key]), dtype=object)

    def obs_column(self, key: str, purpose: str) -> np.ndarray | pd.Categorical:
        """Whole obs column (categorical, string or numeric); ``purpose`` names the option in errors."""
        if key not in self.obs_keys():
            raise InputError(
                f"{self.path}: obs has no column {key!r} ({purpose}); columns present: {', '.join(self.obs_keys()) or 'none'}"
            )
        value = read_elem(self._h5["obs"][key])
        if isinstance(value, pd.Categorical):
            return value
        return np.asarray(value)

    # -- obsm --------------------------------------------------------------------------------
    def obsm_keys(self) -> list[str]:
        return list(self._h5["obsm"].keys()) if "obsm" in self._h5 else []

    def obsm_array(self, key: str) -> np.ndarray:
        if key not in self.obsm_keys():
            present = ", ".join(self.obsm_keys()) or "none"
            raise InputError(f"{self.path}: obsm has no key {key!r} (position key); obsm keys present: {present}")
        node = self._h5["obsm"][key]
        if isinstance(node, h5py.Dataset):
            return np.asarray(node[...])
        if _attr_str(node, "encoding-type") == "dataframe":
            return coordinate_columns(read_elem(node), f"{self.path}: obsm[{key!r}]")
        raise InputError(f"{self.path}: obsm[{key!r}] is not an array (encoding {_attr_str(node, 'encoding-type')})")

    # -- expression matrix ------------------------------------------------------------------
    def layer_keys(self) -> list[str]:
        return list(self._h5["layers"].keys()) if "layers" in self._h5 else []

    def matrix(self, layer: str | None = None) -> "Matrix":
        """The expression matrix: ``X`` (layer None or 'X') or ``layers[layer]``."""
        if layer in (None, "X"):
            if "X" not in self._h5:
                raise InputError(f"{self.path}: has no X matrix; layers present: {', '.join(self.layer_keys()) or 'none'}")
            node, name = self._h5["X"], "X"
        else:
            if layer not in self.layer_keys():
                raise InputError(
                    f"{self.path}: has no layer {layer!r}; layers present: {', '.join(self.layer_keys()) or 'none'}"
                )
            node, name = self._h5["layers"][layer], f"layers/{layer}"
        return Matrix(node, f"{self.path}:{name}")


class Matrix:
    """Row-chunk access to a dense, CSR or CSC matrix stored in an h5ad file."""

    def __init__(self, node, label: str):
        self.label = label
        self._node = node
        if isinstance(node, h5py.Dataset):
            if node.ndim != 2:
                raise InputError(f"{label}: expression matrix must be 2-D, found shape {node.shape}")
            self.encoding = "dense"
            self.shape = tuple(int(s) for s in node.shape)
        else:
            self.encoding = _attr_str(node, "encoding-type")
            if self.encoding not in SPARSE_ENCODINGS:
                raise InputError(f"{label}: unsupported matrix encoding {self.encoding!r} (expected dense, csr_matrix or csc_matrix)")
            self.shape = tuple(int(s) for s in node.attrs["shape"])
            self._indptr = np.asarray(node["indptr"][...], dtype=np.int64)  # n+1 integers: small
            self._csc_cursor: np.ndarray | None = None
            self._csc_next_start = 0

    @property
    def n_rows(self) -> int:
        return self.shape[0]

    @property
    def is_sparse(self) -> bool:
        return self.encoding != "dense"

    def rows(self, start: int, stop: int) -> np.ndarray | sp.csr_matrix:
        """Rows [start, stop) as float32 (dense ndarray or CSR matrix)."""
        if self.encoding == "dense":
            return np.asarray(self._node[start:stop], dtype=np.float32)
        if self.encoding == "csr_matrix":
            return self._csr_rows(start, stop)
        return self._csc_rows(start, stop)

    def iter_chunks(self, chunk_size: int) -> Iterator[tuple[int, np.ndarray | sp.csr_matrix]]:
        """Yield (start, rows) for consecutive row chunks; CSC must be read in order (see _csc_rows)."""
        for start in range(0, self.n_rows, chunk_size):
            yield start, self.rows(start, min(start + chunk_size, self.n_rows))

    def _csr_rows(self, start: int, stop: int) -> sp.csr_matrix:
        lo, hi = int(self._indptr[start]), int(self._indptr[stop])
        data = np.asarray(self._node["data"][lo:hi], dtype=np.float32)
        indices = np.asarray(self._node["indices"][lo:hi], dtype=np.int32)
        indptr = (self._indptr[start : stop + 1] - lo).astype(np.int64)
        return sp.csr_matrix((data, indices, indptr), shape=(stop - start, self.shape[1]))

    def _csc_rows(self, start: int, stop: int) -> sp.csr_matrix:
        """Rows of a CSC matrix in one pass over the file, without loading it.

        Row indices inside each column are sorted (anndata writes canonical matrices), so for
        consecutive row chunks each column's entries come in order: a per-column cursor remembers
        where the previous chunk ended. Each column is read in windows sized by its expected number
        of entries in the chunk, grown until the window passes ``stop``.
        """
        n_cols = self.shape[1]
        if self._csc_cursor is None or start != self._csc_next_start:
            self._csc_seek(start)
        rows_out, cols_out, data_out = [], [], []
        indices_ds, data_ds = self._node["indices"], self._node["data"]
        fraction = (stop - start) / max(self.n_rows, 1)
        for col in range(n_cols):
            cursor, col_end = int(self._csc_cursor[col]), int(self._indptr[col + 1])
            if cursor >= col_end:
                continue
            window = max(64, int((col_end - self._indptr[col]) * fraction * 1.5))
            while True:
                hi = min(cursor + window, col_end)
                rows = np.asarray(indices_ds[cursor:hi])
                if rows.size and rows[0] < start:
                    raise InputError(f"{self.label}: CSC matrix with unsorted row indices is not supported; rewrite it as CSR")
                n_inside = int(np.searchsorted(rows, stop))
                if n_inside < rows.size or hi == col_end:
                    break
                window *= 2
            if n_inside:
                rows_out.append(rows[:n_inside] - start)
                cols_out.append(np.full(n_inside, col, dtype=np.int32))
                data_out.append(np.asarray(data_ds[cursor : cursor + n_inside], dtype=np.float32))
            self._csc_cursor[col] = cursor + n_inside
        self._csc_next_start = stop
        if not rows_out:
            return sp.csr_matrix((stop - start, n_cols), dtype=np.float32)
        coo = sp.coo_matrix(
            (np.concatenate(data_out), (np.concatenate(rows_out), np.concatenate(cols_out))),
            shape=(stop - start, n_cols),
        )
        return coo.tocsr()


    def _csc_seek(self, start: int) -> None:
        """Point each column's cursor at its first entry with row >= start (binary search on disk)."""
        indices_ds = self._node["indices"]
        cursor = self._indptr[:-1].copy()
        if start > 0:
            for col in range(self.shape[1]):
                lo, hi = int(self._indptr[col]), int(self._indptr[col + 1])
                while lo < hi:
                    mid = (lo + hi) // 2
                    if int(indices_ds[mid]) < start:
                        lo = mid + 1
                    else:
                        hi = mid
                cursor[col] = lo
        self._csc_cursor = cursor
        self._csc_next_start = start

    def sample_values(self, n_pieces: int = 8, piece_size: int = 200_000) -> np.ndarray:
        """Stored values from evenly spaced places of the matrix, to judge their kind cheaply.

        For sparse matrices only the explicit values matter (zeros are integers), so evenly spaced
        slices of ``data`` are read; for dense ones, evenly spaced row blocks.
        """
        if self.is_sparse:
            data = self._node["data"]
            total, starts = data.shape[0], []
            if total:
                starts = np.linspace(0, max(total - piece_size, 0), n_pieces).astype(np.int64)
            pieces = [np.asarray(data[s : s + piece_size]) for s in sorted(set(starts.tolist()) if len(starts) else [])]
        else:
            rows_per_piece = max(1, piece_size // max(self.shape[1], 1))
            starts = np.linspace(0, max(self.n_rows - rows_per_piece, 0), n_pieces).astype(np.int64)
            pieces = [np.asarray(self._node[s : s + rows_per_piece]).ravel() for s in sorted(set(starts.tolist()))]
        return np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)


def coordinate_columns(frame: pd.DataFrame, label: str) -> np.ndarray:
    """Coordinates held in a DataFrame (some readers write obsm['spatial'] so): its x, y[, z] columns
    when it names them (other columns, such as a field of view, are left out), else all its columns.
    Every column taken must be numeric; the width is checked by the caller."""
    by_name = {str(c).strip().lower(): c for c in frame.columns}
    named = [by_name[a] for a in ("x", "y", "z") if a in by_name]
    columns = named if {"x", "y"} <= set(by_name) else list(frame.columns)
    for column in columns:
        dtype = frame[column].dtype
        if not (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)):
            raise InputError(f"{label}: column {column!r} of the coordinates is not numeric (dtype {dtype}); "
                             "coordinates must be numbers")
    return frame[columns].to_numpy(dtype=np.float64, na_value=np.nan).reshape(len(frame), len(columns))


def read_var_names(path: str | Path) -> np.ndarray:
    """Gene symbols of a file, reading nothing else (cheap)."""
    with H5adFile(path) as h5ad:
        return h5ad.var_names
