"""Parquet shards of one slice: atomic writing, checksummed reading.

Layout and columns are specified in docs/FORMATS.md. Every file is first written under a hidden
temporary name (see ``alphastomics.io.files``) in its final directory and renamed only when the
whole run succeeded, so an error or a kill leaves nothing that looks like output: readers only
open shards listed in a manifest. Shard files are named by the slice's file key
(``alphastomics.io.names``), never by the raw slice id.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alphastomics.errors import InputError
from alphastomics.io.files import sha256_file, temp_path_for
from alphastomics.io.manifest import load_manifest
from alphastomics.io.names import slice_file_key

log = logging.getLogger(__name__)

COMPRESSION = "zstd"
DEFAULT_MAX_CELLS_PER_SHARD = 200_000
DEFAULT_ROW_GROUP_ROWS = 65_536


# -- writing ----------------------------------------------------------------------------------
def shard_schema(n_genes: int) -> pa.Schema:
    # Fields that always hold a value are declared non-nullable: for the expression list this
    # drops a definition level per value, about a quarter of the Parquet write time.
    return pa.schema(
        [
            pa.field("cell_id", pa.string(), nullable=False),
            pa.field("slice_id", pa.string(), nullable=False),
            pa.field("platform", pa.string(), nullable=False),
            pa.field("x", pa.float32(), nullable=False),
            pa.field("y", pa.float32(), nullable=False),
            pa.field("z", pa.float32(), nullable=False),
            pa.field("cell_type", pa.dictionary(pa.int32(), pa.string())),  # null where unknown
            pa.field("expression", expression_type(n_genes), nullable=False),
        ]
    )


def expression_type(n_genes: int) -> pa.DataType:
    return pa.list_(pa.field("element", pa.float32(), nullable=False), n_genes)


@dataclass
class CellBatch:
    """Rows of one slice ready to be written (all arrays have the same length)."""

    cell_ids: np.ndarray  # (n,) str/object
    coords: np.ndarray  # (n, 3) float32
    cell_type_codes: np.ndarray  # (n,) int32 into the writer's categories, -1 = unknown
    expression: np.ndarray  # (n, G) float32

    def __len__(self) -> int:
        return len(self.cell_ids)

    def take(self, start: int, stop: int) -> "CellBatch":
        return CellBatch(self.cell_ids[start:stop], self.coords[start:stop], self.cell_type_codes[start:stop], self.expression[start:stop])


class BackgroundWriter:
    """Runs Parquet writes on one worker thread, in submission order, so that encoding and
    compressing one batch (which releases the GIL) overlaps reading and normalising the next.

    At most ``max_pending`` tasks wait, which bounds the memory held by queued tables. The first
    error of a task is raised again by the next ``submit`` or by ``drain``.
    """

    def __init__(self, max_pending: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._pending: list = []
        self.max_pending = max_pending

    def submit(self, fn, *args) -> None:
        self._collect(keep=self.max_pending - 1)
        self._pending.append(self._executor.submit(fn, *args))

    def drain(self) -> None:
        self._collect(keep=0)

    def shutdown(self) -> None:
        """Wait for running tasks, ignoring their errors (used when the run is being aborted)."""
        for future in self._pending:
            future.exception()
        self._pending = []
        self._executor.shutdown(wait=True)

    def _collect(self, keep: int) -> None:
        while len(self._pending) > keep:
            self._pending.pop(0).result()


class _InlineWriter:
    """Same interface as BackgroundWriter, running each task at once."""

    def submit(self, fn, *args) -> None:
        fn(*args)

    def drain(self) -> None:
        pass


class SliceShardWriter:
    """Writes the cells of one slice into ``<stem>-<part>.parquet`` files of at most ``max_rows`` rows.

    Batches are buffered up to ``row_group_rows`` so that slices whose cells arrive in small
    interleaved pieces still get reasonably large row groups. Files stay under temporary names
    until ``commit``. File operations go through ``io`` (a BackgroundWriter shared by the writers
    of a run, or inline); part bookkeeping stays on the calling thread.
    """

    def __init__(self, out_dir: Path, slice_id: str, platform: str, n_genes: int, categories: list[str],
                 max_rows: int = DEFAULT_MAX_CELLS_PER_SHARD, row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
                 io: BackgroundWriter | None = None):
        if max_rows < 1:
            raise ValueError("max_rows must be positive")
        self.out_dir, self.slice_id, self.platform = Path(out_dir), slice_id, platform
        self.schema = shard_schema(n_genes)
        self.stem = slice_file_key(slice_id)
        self.max_rows, self.row_group_rows = max_rows, min(row_group_rows, max_rows)
        self._categories = pa.array(categories, pa.string())
        self._io = io or _InlineWriter()
        self._buffer: list[CellBatch] = []
        self.buffered_rows = 0
        self._writer: pq.ParquetWriter | None = None  # touched only by tasks run through self._io
        self._part_open = False
        self._rows_in_part = 0
        self.parts: list[list] = []  # [temp path, final path, rows]
        self._committed: list[Path] = []

    def append(self, batch: CellBatch) -> None:
        if len(batch):
            self._buffer.append(batch)
            self.buffered_rows += len(batch)
        if self.buffered_rows >= self.row_group_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows, starting new part files where the current one is full."""
        if not self._buffer:
            return
        batch = _concat_batches(self._buffer)
        self._buffer, self.buffered_rows = [], 0
        offset = 0
        while offset < len(batch):
            if not self._part_open:
                self._open_part()
            n = min(len(batch) - offset, self.max_rows - self._rows_in_part)
            self._io.submit(self._write, self._table(batch.take(offset, offset + n)))
            self._rows_in_part += n
            self.parts[-1][2] = self._rows_in_part
            offset += n
            if self._rows_in_part >= self.max_rows:
                self._close_part()

    def close(self) -> None:
        self.flush()
        self._close_part()

    def commit(self, relative_to: Path) -> list[dict]:
        """Rename finished parts to their final names; return their manifest entries."""
        self.close()
        self._io.drain()
        entries = []
        for temp, final, n_rows in self.parts:
            digest = sha256_file(temp)
            os.replace(temp, final)
            self._committed.append(final)
            entries.append({"path": Path(os.path.relpath(final, relative_to)).as_posix(), "n_rows": n_rows, "sha256": digest})
        remove_extra_parts(self.out_dir, self.stem, keep=len(self.parts))
        return entries

    def abort(self) -> None:
        """Drop everything written so far (call after the background writer has stopped)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # the file is deleted anyway
                pass
            self._writer = None
        for temp, _, _ in self.parts:
            temp.unlink(missing_ok=True)
        for final in self._committed:  # an error during commit: no manifest lists them, drop them too
            final.unlink(missing_ok=True)
        self._buffer, self.buffered_rows, self._part_open = [], 0, False

    def _open_part(self) -> None:
        final = self.out_dir / f"{self.stem}-{len(self.parts):04d}.parquet"
        temp = temp_path_for(final)
        self.parts.append([temp, final, 0])
        self._rows_in_part, self._part_open = 0, True
        self._io.submit(self._open_file, temp)

    def _close_part(self) -> None:
        if self._part_open:
            self._part_open = False
            self._io.submit(self._close_file)

    # tasks run through self._io, in order
    def _open_file(self, temp: Path) -> None:
        self._writer = pq.ParquetWriter(
            temp, self.schema, compression=COMPRESSION,
            # dictionary pages help the repeated strings; for floats they only cost time
            use_dictionary=["slice_id", "platform", "cell_type"],
            # min/max of every list element cost a good share of the write time and serve no reader
            write_statistics=[name for name in self.schema.names if name != "expression"],
        )

    def _write(self, table: pa.Table) -> None:
        self._writer.write_table(table, row_group_size=table.num_rows)

    def _close_file(self) -> None:
        self._writer.close()
        self._writer = None

    def _table(self, batch: CellBatch) -> pa.Table:
        n, n_genes = batch.expression.shape
        codes = np.asarray(batch.cell_type_codes, dtype=np.int32)
        cell_type = pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0, type=pa.int32()), self._categories)
        expression = pa.FixedSizeListArray.from_arrays(
            pa.array(np.ascontiguousarray(batch.expression, dtype=np.float32).reshape(-1)), type=expression_type(n_genes)
        )
        coords = np.asarray(batch.coords, dtype=np.float32)
        return pa.Table.from_arrays(
            [
                pa.array(batch.cell_ids, pa.string()),
                _repeated_string(self.slice_id, n),
                _repeated_string(self.platform, n),
                pa.array(coords[:, 0]), pa.array(coords[:, 1]), pa.array(coords[:, 2]),
                cell_type,
                expression,
            ],
            schema=self.schema,
        )


def _repeated_string(value: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value])).cast(pa.string())


def _concat_batches(batches: list[CellBatch]) -> CellBatch:
    if len(batches) == 1:
        return batches[0]
    return CellBatch(
        np.concatenate([b.cell_ids for b in batches]),
        np.concatenate([b.coords for b in batches]),
        np.concatenate([b.cell_type_codes for b in batches]),
        np.concatenate([b.expression for b in batches]),
    )


def remove_extra_parts(out_dir: Path, stem: str, keep: int) -> None:
    """Delete ``<stem>-NNNN.parquet`` with NNNN >= keep: parts of an earlier, larger run of this slice."""
    pattern = re.compile(rf"^{re.escape(stem)}-(\d{{4,}})\.parquet$")
    for entry in Path(out_dir).iterdir():
        match = pattern.match(entry.name)
        if match and int(match.group(1)) >= keep:
            entry.unlink(missing_ok=True)


# -- reading ----------------------------------------------------------------------------------
@dataclass
class SliceData:
    slice_id: str
    platform: str
    cell_ids: np.ndarray  # (N,) str
    coords: np.ndarray  # (N, 3) float32, source units (z = 0 for 2D)
    n_dims: int  # 2 or 3
    expression: np.ndarray  # (N, G) float32, manifest gene order
    gene_mask: np.ndarray  # (G,) bool, True where the platform measured the gene
    cell_types: np.ndarray | None  # (N,) object/str, None if the slice has none
    genes: list[str]
    covariates: dict[str, str] = field(default_factory=dict)  # per-slice covariates (condition, region, ...)


def verify_shard(path: Path, expected_sha256: str) -> None:
    if not path.is_file():
        raise InputError(f"shard {path} listed in the manifest does not exist; re-run preprocess")
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise InputError(
            f"shard {path} does not match its manifest checksum (sha256 {actual[:12]}..., expected {expected_sha256[:12]}...): "
            "it was changed or truncated after preprocessing; re-run preprocess"
        )


def read_shards(paths: list[Path]) -> pa.Table:
    tables = []
    for path in paths:
        try:
            tables.append(pq.read_table(path))
        except (OSError, pa.ArrowException) as err:
            raise InputError(f"shard {path}: cannot be read as Parquet ({err})") from None
    return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def expression_matrix(column: pa.ChunkedArray | pa.Array, n_genes: int) -> np.ndarray:
    """(N, G) float32 from the fixed-size list column, without going through Python lists."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = array.flatten().to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float32).reshape(len(array), n_genes)


def _dataset_base(dataset_dir: str | Path) -> Path:
    """Directory shard paths are relative to: the given directory, or the parent of a manifest file."""
    dataset_dir = Path(dataset_dir)
    return dataset_dir.parent if dataset_dir.suffix == ".json" else dataset_dir


def slice_gene_mask(manifest: dict, entry: dict) -> np.ndarray:
    """Measured genes of the slice's own source file where recorded, else of its platform.

    Files of one platform may have different panels (e.g. consecutive ST layers), so the file's
    own list is the precise one; the platform list is the genes measured in all its files.
    """
    genes = manifest["genes"]
    platform = manifest["platforms"][entry["platform"]]
    measured = platform["measured_genes"]
    for source in platform.get("sources", []):
        if source.get("path") == entry.get("source") and "measured_genes" in source:
            measured = source["measured_genes"]
            break
    measured = set(measured)
    return np.array([g in measured for g in genes], dtype=bool)


def load_slice(dataset_dir: str | Path, slice_id: str, manifest: dict | None = None, verify: bool = True) -> SliceData:
    """All cells of one slice from its shards, checksums verified first."""
    if manifest is None:
        manifest = load_manifest(dataset_dir)
    base = _dataset_base(dataset_dir)
    slices = manifest["slices"]
    if slice_id not in slices:
        raise InputError(f"{base}: unknown slice {slice_id!r}; slices in the manifest: {', '.join(sorted(slices))}")
    entry = slices[slice_id]
    paths = [base / shard["path"] for shard in entry["shards"]]
    for path, shard in zip(paths, entry["shards"]):
        if verify:
            verify_shard(path, shard["sha256"])
        elif not path.is_file():
            raise InputError(f"shard {path} listed in the manifest does not exist; re-run preprocess")
    table = read_shards(paths)
    genes = list(manifest["genes"])
    if table.num_rows != entry["n_cells"]:
        raise InputError(f"slice {slice_id!r}: shards hold {table.num_rows} rows, manifest says {entry['n_cells']}")
    list_size = table.schema.field("expression").type.list_size
    if list_size != len(genes):
        raise InputError(f"slice {slice_id!r}: shard expression has {list_size} genes, manifest lists {len(genes)}")
    coords = np.stack([table[c].to_numpy() for c in ("x", "y", "z")], axis=1).astype(np.float32, copy=False)
    cell_types = None
    if entry.get("has_cell_type", False):
        cell_types = table["cell_type"].cast(pa.string()).to_numpy(zero_copy_only=False)
    return SliceData(
        slice_id=slice_id,
        platform=entry["platform"],
        cell_ids=np.asarray(table["cell_id"].to_numpy(zero_copy_only=False)).astype(str),
        coords=coords,
        n_dims=int(entry["n_dims"]),
        expression=expression_matrix(table["expression"], len(genes)),
        gene_mask=slice_gene_mask(manifest, entry),
        cell_types=cell_types,
        genes=genes,
        covariates={str(k): str(v) for k, v in (entry.get("covariates") or {}).items()},
    )
