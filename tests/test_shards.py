"""Shard writing/reading, checksums, temporary files, manifest loading and merging."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alphastomics.cli import main as cli_main
from alphastomics.errors import InputError
from alphastomics.io.manifest import load_manifest, merge_manifests, write_manifest
from alphastomics.io.files import atomic_output, is_temp_file, remove_stale_temp_files, sha256_file, temp_path_for
from alphastomics.io.shards import BackgroundWriter, CellBatch, SliceShardWriter, load_slice

GENES = ["A", "B", "C"]


def _batch(n: int, start: int = 0, n_genes: int = 3) -> CellBatch:
    rows = np.arange(start, start + n)
    return CellBatch(
        cell_ids=np.array([f"c{i}" for i in rows], dtype=object),
        coords=np.stack([rows, rows * 2, np.zeros(n)], axis=1).astype(np.float32),
        cell_type_codes=(rows % 3 - 1).astype(np.int32),  # -1 = unknown every third cell
        expression=np.tile(rows[:, None], (1, n_genes)).astype(np.float32) / 10,
    )


def _write_slice(out_dir: Path, slice_id: str, n: int, max_rows: int = 1000, io=None) -> list[dict]:
    writer = SliceShardWriter(out_dir, slice_id, "plat", len(GENES), ["T1", "T2"], max_rows=max_rows, row_group_rows=4, io=io)
    for start in range(0, n, 7):
        writer.append(_batch(min(7, n - start), start))
    return writer.commit(relative_to=out_dir)


def _manifest_for(out_dir: Path, slices: dict[str, list[dict]], measured=GENES, source="src.h5ad") -> dict:
    return {
        "format_version": 1, "package_version": "0.1.0", "dataset": "d", "genes": GENES,
        "platforms": {"plat": {"measured_genes": list(measured), "normalization": {"requested": "none", "applied": "none"},
                               "position_key": "spatial", "sources": [{"path": source, "measured_genes": list(measured)}]}},
        "slices": {sid: {"platform": "plat", "source": source, "n_cells": sum(s["n_rows"] for s in shards), "n_dims": 2,
                         "bounds": {"min": [0, 0, 0], "max": [1, 1, 0]}, "has_cell_type": True, "shards": shards}
                   for sid, shards in slices.items()},
    }


def test_parts_split_at_max_rows_and_round_trip(tmp_path):
    shards = _write_slice(tmp_path, "s1", 25, max_rows=10)
    assert [s["n_rows"] for s in shards] == [10, 10, 5]
    assert [s["path"] for s in shards] == ["s1-0000.parquet", "s1-0001.parquet", "s1-0002.parquet"]
    assert not [p for p in tmp_path.iterdir() if is_temp_file(p)]
    write_manifest(tmp_path / "manifest.json", _manifest_for(tmp_path, {"s1": shards}, measured=["A", "C"]))
    data = load_slice(tmp_path, "s1")
    assert data.expression.shape == (25, 3) and data.expression.dtype == np.float32
    np.testing.assert_allclose(data.expression[:, 0], np.arange(25) / 10, rtol=1e-6)
    np.testing.assert_array_equal(data.coords[:, 1], np.arange(25) * 2)
    assert data.cell_ids[3] == "c3" and data.n_dims == 2 and data.platform == "plat"
    assert data.gene_mask.tolist() == [True, False, True]
    assert data.cell_types[0] is None and data.cell_types[1] == "T1" and data.cell_types[2] == "T2"


def test_background_writer_gives_identical_files(tmp_path):
    inline_dir, thread_dir = tmp_path / "inline", tmp_path / "thread"
    inline_dir.mkdir(), thread_dir.mkdir()
    io = BackgroundWriter()
    inline = _write_slice(inline_dir, "s", 30, max_rows=12)
    threaded = _write_slice(thread_dir, "s", 30, max_rows=12, io=io)
    io.shutdown()
    assert [s["sha256"] for s in inline] == [s["sha256"] for s in threaded]


def test_shard_columns_types_and_compression(tmp_path):
    shards = _write_slice(tmp_path, "s1", 9)
    path = tmp_path / shards[0]["path"]
    table = pq.read_table(path)
    assert table.schema.field("cell_type").type == pa.dictionary(pa.int32(), pa.string())
    expression_type = table.schema.field("expression").type
    assert pa.types.is_fixed_size_list(expression_type) and expression_type.list_size == 3
    assert expression_type.value_type == pa.float32()
    for column in ("x", "y", "z"):
        assert table.schema.field(column).type == pa.float32()
    metadata = pq.ParquetFile(path).metadata
    assert {metadata.row_group(0).column(i).compression for i in range(metadata.num_columns)} == {"ZSTD"}
    # readable without the package, as docs/FORMATS.md promises
    matrix = np.stack(table["expression"].to_numpy(zero_copy_only=False))
    assert matrix.shape == (9, 3)
    frame = pl.read_parquet(path)
    assert frame.columns == ["cell_id", "slice_id", "platform", "x", "y", "z", "cell_type", "expression"]
    assert frame["expression"].dtype == pl.Array(pl.Float32, 3)
    assert frame["cell_type"].dtype == pl.Categorical
    np.testing.assert_allclose(frame["expression"].to_numpy(), matrix)


def test_tampered_shard_is_refused_by_name(tmp_path):
    shards = _write_slice(tmp_path, "s1", 12)
    write_manifest(tmp_path / "manifest.json", _manifest_for(tmp_path, {"s1": shards}))
    path = tmp_path / shards[0]["path"]
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0xFF
    path.write_bytes(bytes(content))
    with pytest.raises(InputError, match=r"s1-0000\.parquet.*does not match its manifest checksum"):
        load_slice(tmp_path, "s1")
    path.unlink()
    with pytest.raises(InputError, match=r"s1-0000\.parquet.*does not exist"):
        load_slice(tmp_path, "s1")


def test_unknown_slice_lists_known_ones(tmp_path):
    write_manifest(tmp_path / "manifest.json", _manifest_for(tmp_path, {"s1": _write_slice(tmp_path, "s1", 3)}))
    with pytest.raises(InputError, match=r"unknown slice 'nope'.*s1"):
        load_slice(tmp_path, "nope")


def test_load_manifest_errors(tmp_path):
    with pytest.raises(InputError, match="manifest not found"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="not a readable manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1, "genes": []}))
    with pytest.raises(InputError, match="lacks key.*platforms"):
        load_manifest(tmp_path)


def test_outputs_appear_whole_with_the_usual_permissions_or_not_at_all(tmp_path):
    """A sample file, a model and a report are written through atomic_output: readable by the group
    and others as any file this process creates (not a private temporary's 0600), and an error
    while writing leaves the old file as it was and no temporary."""
    import anndata as ad
    import torch

    from alphastomics.checkpoint import atomic_torch_save
    from alphastomics.io.sample_file import write_sample as write_h5ad_atomic

    (tmp_path / "plain.txt").write_text("x")
    usual = (tmp_path / "plain.txt").stat().st_mode & 0o777
    write_h5ad_atomic(ad.AnnData(np.ones((3, 2), np.float32)), tmp_path / "s.h5ad")
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "m.ckpt")
    for name in ("s.h5ad", "m.ckpt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == usual, name

    (tmp_path / "report.html").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(tmp_path / "report.html") as temp:
            temp.write_text("half")
            raise RuntimeError("killed while writing")
    assert (tmp_path / "report.html").read_text() == "old"
    assert not [p for p in tmp_path.iterdir() if is_temp_file(p)]


def test_sample_files_with_pandas_string_arrays_are_written(tmp_path):
    """pandas 3 makes every string column a StringArray (pandas 2 when asked): anndata refuses to
    write one unless allowed; a GPU machine with pandas 3 failed at obs['cell_id']."""
    import anndata as ad
    import pandas as pd

    from alphastomics.io.sample_file import write_sample as write_h5ad_atomic

    adata = ad.AnnData(np.ones((2, 1), np.float32))
    adata.obs["cell_id"] = pd.array(["a", "b"], dtype="string")
    with pytest.raises(RuntimeError, match="allow_write_nullable_strings"):
        adata.write_h5ad(tmp_path / "plain.h5ad")
    write_h5ad_atomic(adata, tmp_path / "s.h5ad")
    assert ad.read_h5ad(tmp_path / "s.h5ad").obs["cell_id"].tolist() == ["a", "b"]


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    mine = temp_path_for(tmp_path / "keep.parquet")
    stale = Path(str(mine).replace(f".{os.getpid()}.tmp", f".{dead_pid}.tmp"))
    live = Path(str(mine).replace(f".{os.getpid()}.tmp", f".{os.getppid()}.tmp"))  # a running process
    for path in (stale, live):
        path.write_bytes(b"partial")
    (tmp_path / "real.parquet").write_bytes(b"x")
    assert is_temp_file(stale) and not is_temp_file(tmp_path / "real.parquet")
    assert remove_stale_temp_files(tmp_path) == 1
    assert not stale.exists() and live.exists() and (tmp_path / "real.parquet").exists()


def _per_file_output(root: Path, platform: str, slice_id: str, source: str, measured=GENES) -> Path:
    out_dir = root / "shards" / platform
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _manifest_for(out_dir, {slice_id: _write_slice(out_dir, slice_id, 5)}, measured=measured, source=source)
    manifest["platforms"][platform] = manifest["platforms"].pop("plat")
    manifest["slices"][slice_id]["platform"] = platform
    path = out_dir / f"{Path(source).stem}.manifest.json"
    write_manifest(path, manifest)
    return path


def test_manifest_command_merges_and_rebases_paths(tmp_path):
    first = _per_file_output(tmp_path, "p1", "s1", "a.h5ad", measured=["A", "B"])
    second = _per_file_output(tmp_path, "p2", "s2", "b.h5ad", measured=["C"])
    third = _per_file_output(tmp_path, "p1", "s3", "c.h5ad", measured=["A"])
    out = tmp_path / "manifest.json"
    assert cli_main(["manifest", str(first), str(second), str(third), "--out", str(out), "--dataset", "demo"]) == 0
    merged = load_manifest(tmp_path)
    assert merged["dataset"] == "demo" and set(merged["slices"]) == {"s1", "s2", "s3"}
    assert merged["slices"]["s2"]["shards"][0]["path"] == "shards/p2/s2-0000.parquet"
    assert merged["platforms"]["p1"]["measured_genes"] == ["A"]  # measured in every file of the platform
    assert [s["path"] for s in merged["platforms"]["p1"]["sources"]] == ["a.h5ad", "c.h5ad"]
    assert load_slice(tmp_path, "s1").gene_mask.tolist() == [True, True, False]  # the file's own panel
    assert load_slice(tmp_path, "s2").gene_mask.tolist() == [False, False, True]


def test_manifest_merge_refuses_slice_claimed_twice(tmp_path, capsys):
    first = _per_file_output(tmp_path, "p1", "same", "a.h5ad")
    other = tmp_path / "other"
    second = _per_file_output(other, "p1", "same", "b.h5ad")
    out = tmp_path / "manifest.json"
    assert cli_main(["manifest", str(first), str(second), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "'same' is claimed by two files" in err and "a.h5ad" in err and "b.h5ad" in err
    assert not out.exists()


def test_manifest_merge_records_file_keys_and_refuses_colliding_ones(tmp_path):
    from alphastomics.io.names import slice_file_key

    first = _per_file_output(tmp_path, "p1", "a b", "a.h5ad")
    second = _per_file_output(tmp_path / "other", "p1", slice_file_key("a b"), "b.h5ad")
    merged = merge_manifests([first], tmp_path / "manifest.json")
    assert merged["slices"]["a b"]["file_key"] == slice_file_key("a b")
    with pytest.raises(InputError, match="same file name"):
        merge_manifests([first, second], tmp_path / "manifest.json")


def test_manifest_merge_refuses_different_gene_lists(tmp_path):
    first = _per_file_output(tmp_path, "p1", "s1", "a.h5ad")
    second = _per_file_output(tmp_path, "p2", "s2", "b.h5ad")
    manifest = json.loads(second.read_text())
    manifest["genes"] = ["A", "B", "D"]
    second.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="gene list differs"):
        merge_manifests([first, second], tmp_path / "manifest.json")


def test_sha256_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    assert sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _imported_modules(path) -> set[str]:
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    names = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return names | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}


def test_manifest_does_not_import_shards():
    """manifest.py and shards.py imported each other (from inside functions, to dodge the cycle):
    shards reads manifests, so manifest must not need shards."""
    from alphastomics.io import manifest

    assert "alphastomics.io.shards" not in _imported_modules(manifest.__file__)
