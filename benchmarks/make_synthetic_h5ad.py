"""Write a synthetic sparse h5ad (N cells x G genes, integer counts, 2-D coordinates, slice ids).

The file is written piece by piece with h5py in anndata's on-disk layout (CSR ``X`` in resizable
datasets, obs index and columns, var, obsm), so making a 2,000,000-cell file never holds more than
one piece in memory. ``anndata.read_h5ad`` opens the result.

    python benchmarks/make_synthetic_h5ad.py --n-cells 2000000 --out /tmp/synthetic_2m.h5ad
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import h5py
import numpy as np

STRING = h5py.string_dtype("utf-8")


def _encode(node, encoding_type: str, version: str = "0.2.0") -> None:
    node.attrs["encoding-type"] = encoding_type
    node.attrs["encoding-version"] = version


def _write_strings(group, name: str, values) -> None:
    dataset = group.create_dataset(name, data=np.asarray(values, dtype=object), dtype=STRING)
    _encode(dataset, "string-array")


def _empty_dict(h5, name: str) -> None:
    _encode(h5.create_group(name), "dict", "0.1.0")


def _write_obs(h5, n_cells: int, n_slices: int, piece: int) -> None:
    obs = h5.create_group("obs")
    _encode(obs, "dataframe")
    obs.attrs["_index"] = "_index"
    obs.attrs["column-order"] = ["slice_id"]
    index = obs.create_dataset("_index", shape=(n_cells,), dtype=STRING, chunks=(min(n_cells, 65536),))
    _encode(index, "string-array")
    for start in range(0, n_cells, piece):
        stop = min(start + piece, n_cells)
        index[start:stop] = np.array([f"cell{i}" for i in range(start, stop)], dtype=object)
    # contiguous blocks of cells per slice, as files of real atlases usually are
    slice_of_cell = (np.arange(n_cells, dtype=np.int64) * n_slices // n_cells).astype(np.int8)
    column = obs.create_group("slice_id")
    _encode(column, "categorical")
    column.attrs["ordered"] = False
    _encode(column.create_dataset("codes", data=slice_of_cell), "array")
    _write_strings(column, "categories", [f"slice{i}" for i in range(n_slices)])


def _write_var(h5, n_genes: int) -> None:
    var = h5.create_group("var")
    _encode(var, "dataframe")
    var.attrs["_index"] = "_index"
    var.attrs["column-order"] = np.array([], dtype=STRING)
    _write_strings(var, "_index", [f"Gene{i}" for i in range(n_genes)])


def _write_counts(h5, n_cells: int, n_genes: int, density: float, piece: int, rng) -> None:
    X = h5.create_group("X")
    _encode(X, "csr_matrix", "0.1.0")
    X.attrs["shape"] = np.array([n_cells, n_genes], dtype=np.int64)
    data = X.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 20,))
    indices = X.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 20,))
    indptr = X.create_dataset("indptr", shape=(n_cells + 1,), dtype=np.int64)
    indptr[0] = 0
    nnz = 0
    gene_rate = rng.gamma(0.5, 2.0, size=n_genes).astype(np.float32)  # uneven genes, like real panels
    for start in range(0, n_cells, piece):
        stop = min(start + piece, n_cells)
        present = rng.random((stop - start, n_genes), dtype=np.float32) < density
        rows, cols = np.nonzero(present)  # row-major: column indices sorted within each row
        values = (1 + rng.poisson(gene_rate[cols])).astype(np.float32)
        data.resize((nnz + len(values),))
        indices.resize((nnz + len(values),))
        data[nnz:] = values
        indices[nnz:] = cols.astype(np.int32)
        indptr[start + 1 : stop + 1] = nnz + np.cumsum(np.bincount(rows, minlength=stop - start))
        nnz += len(values)


def _write_obsm(h5, n_cells: int, n_slices: int, piece: int, rng) -> None:
    obsm = h5.create_group("obsm")
    _encode(obsm, "dict", "0.1.0")
    spatial = obsm.create_dataset("spatial", shape=(n_cells, 2), dtype=np.float32)
    _encode(spatial, "array")
    for start in range(0, n_cells, piece):
        stop = min(start + piece, n_cells)
        spatial[start:stop] = rng.uniform(0, 5000, size=(stop - start, 2)).astype(np.float32)


def make_synthetic_h5ad(out: Path, n_cells: int, n_genes: int = 500, n_slices: int = 4,
                        density: float = 0.1, seed: int = 0, piece: int = 100_000) -> Path:
    rng = np.random.default_rng(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with h5py.File(temp, "w") as h5:
        _encode(h5, "anndata", "0.1.0")
        _write_counts(h5, n_cells, n_genes, density, piece, rng)
        _write_obs(h5, n_cells, n_slices, piece)
        _write_var(h5, n_genes)
        _write_obsm(h5, n_cells, n_slices, piece, rng)
        for name in ("uns", "layers", "obsp", "varm", "varp"):
            _empty_dict(h5, name)
    os.replace(temp, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, required=True)
    parser.add_argument("--n-genes", type=int, default=500)
    parser.add_argument("--n-slices", type=int, default=4)
    parser.add_argument("--density", type=float, default=0.1, help="fraction of non-zero entries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    path = make_synthetic_h5ad(args.out, args.n_cells, args.n_genes, args.n_slices, args.density, args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
