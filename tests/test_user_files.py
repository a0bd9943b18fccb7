"""Files as users have them (issue 35): the forms scanpy, squidpy and spatialdata files take preprocess
with every cell; a file that cannot be used is refused, naming the file and the reason, with nothing
written. Built from real STARmap cells, each file changed the one way a user's file differs."""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from alphastomics.cli import main as cli_main
from alphastomics.io.manifest import load_manifest
from alphastomics.io.shards import load_slice

REPO = Path(__file__).resolve().parents[1]
BZ5 = REPO / "resources" / "starmap_mpfc" / "starmap_mpfc_20180417_BZ5_control.h5ad"
N_CELLS = 120


@pytest.fixture(scope="module")
def cells() -> ad.AnnData:
    """Real cells: the first of BZ5 (dense float32 counts, obsm['spatial'] float32, 166 genes)."""
    return ad.read_h5ad(BZ5)[:N_CELLS].copy()


@pytest.fixture(scope="module")
def baseline(cells, tmp_path_factory) -> np.ndarray:
    """Expression the file as bundled preprocesses to, which every other matrix form must give."""
    folder = tmp_path_factory.mktemp("baseline")
    cells.write_h5ad(folder / "cells.h5ad")
    assert cli_main(["preprocess", str(folder / "cells.h5ad"), "--platform", "p", "--out", str(folder / "out")]) == 0
    return load_slice(folder / "out", "cells").expression


@pytest.fixture
def run(tmp_path, capsys):
    """Write ``adata`` as ``name``.h5ad and preprocess it into its own folder: (exit code, stderr, output)."""

    def _run(adata: ad.AnnData, name: str, *args):
        path = tmp_path / f"{name}.h5ad"
        adata.write_h5ad(path)
        out = tmp_path / f"out_{name}"
        code = cli_main(["preprocess", str(path), "--platform", "p", "--out", str(out), *map(str, args)])
        return code, capsys.readouterr().err, out

    return _run


def assert_nothing_written(out: Path) -> None:
    written = list(out.iterdir()) if out.exists() else []
    assert written == [], written  # no shard, no manifest, no temporary


# -- forms that must preprocess with every cell ----------------------------------------------------
def _csr64(a):
    a.X = sp.csr_matrix(a.X.astype(np.float64))


def _csc_int(a):
    a.X = sp.csc_matrix(a.X.astype(np.int32))


def _dense_int64(a):
    a.X = a.X.astype(np.int64)


def _uint16(a):
    a.X = a.X.astype(np.uint16)


def _counts_in_layer_x_log(a):  # scanpy after sc.pp.log1p, the counts kept in a layer
    a.layers["counts"] = a.X.copy()
    a.X = np.log1p(a.X)


def _no_x(a):
    a.layers["counts"] = a.X.copy()
    a.X = None


def _with_raw(a):
    a.raw = a.copy()


MATRIX_FORMS = {
    "csr_float64": (_csr64, []),
    "csc_int32": (_csc_int, []),
    "dense_int64": (_dense_int64, []),
    "dense_uint16": (_uint16, []),
    "counts_layer": (_counts_in_layer_x_log, ["--layer", "counts"]),
    "no_x_counts_layer": (_no_x, ["--layer", "counts"]),
    "with_raw": (_with_raw, []),
}


@pytest.mark.parametrize("form", MATRIX_FORMS)
def test_matrix_forms_preprocess_with_every_cell(run, cells, baseline, form):
    change, args = MATRIX_FORMS[form]
    adata = cells.copy()
    change(adata)
    code, err, out = run(adata, form, *args)
    assert code == 0, err
    data = load_slice(out, form)
    assert list(data.cell_ids) == list(cells.obs_names)
    np.testing.assert_allclose(data.expression, baseline, rtol=1e-5, atol=1e-6)


def _frame(columns: dict, a) -> pd.DataFrame:
    return pd.DataFrame(columns, index=a.obs_names)


COORDINATE_FORMS = {
    # squidpy's Visium reader: integer pixel coordinates
    "int64": lambda a, xy: np.round(xy).astype(np.int64),
    "float64": lambda a, xy: xy.astype(np.float64),
    "three_columns": lambda a, xy: np.c_[xy, np.arange(a.n_obs) % 4].astype(np.float32),
    # some readers write obsm['spatial'] as a DataFrame
    "frame_xy": lambda a, xy: _frame({"x": xy[:, 0], "y": xy[:, 1]}, a),
    "frame_xyz": lambda a, xy: _frame({"X": xy[:, 0], "Y": xy[:, 1], "Z": np.arange(a.n_obs) % 4}, a),
    "frame_with_fov": lambda a, xy: _frame({"fov": pd.Categorical(["f1"] * a.n_obs), "x": xy[:, 0], "y": xy[:, 1]}, a),
    "frame_unnamed": lambda a, xy: _frame({"spatial_1": xy[:, 0], "spatial_2": xy[:, 1].astype(np.float64)}, a),
}


@pytest.mark.parametrize("form", COORDINATE_FORMS)
def test_coordinate_forms_preprocess_with_every_cell(run, cells, form):
    adata = cells.copy()
    adata.obsm["spatial"] = COORDINATE_FORMS[form](adata, cells.obsm["spatial"])
    code, err, out = run(adata, form)
    assert code == 0, err
    data = load_slice(out, form)
    given = adata.obsm["spatial"]
    given = np.asarray(given.drop(columns=["fov"]) if isinstance(given, pd.DataFrame) and "fov" in given else given, np.float64)
    assert len(data.cell_ids) == N_CELLS and data.n_dims == given.shape[1]
    np.testing.assert_allclose(data.coords[:, : given.shape[1]], given, rtol=1e-6)


def test_obs_names_not_strings_and_nullable_strings(run, cells):
    """An integer index (anndata stores it as strings) and a nullable-string index (anndata >= 0.11)."""
    numbered = cells.copy()
    numbered.obs.index = pd.RangeIndex(N_CELLS)
    code, err, out = run(numbered, "numbered")
    assert code == 0, err
    assert list(load_slice(out, "numbered").cell_ids) == [str(i) for i in range(N_CELLS)]
    nullable = cells.copy()
    nullable.obs.index = pd.Index(list(cells.obs_names), dtype="string")
    with ad.settings.override(allow_write_nullable_strings=True):
        code, err, out = run(nullable, "nullable")
    assert code == 0, err
    assert list(load_slice(out, "nullable").cell_ids) == list(cells.obs_names)


def test_spatialdata_table_as_h5ad(run, cells):
    """A SpatialData table written as h5ad: index '0'.., region and instance columns, float64 centroids,
    nullable cell types with some missing, its attributes in uns."""
    table = cells.copy()
    table.obs = pd.DataFrame({
        "region": pd.Categorical(["cell_circles"] * N_CELLS), "cell_id": np.arange(N_CELLS),
        "cell_type": pd.Categorical(cells.obs["cell_type"].astype(str).where(np.arange(N_CELLS) % 5 > 0)),
    }, index=[str(i) for i in range(N_CELLS)])
    table.obsm["spatial"] = cells.obsm["spatial"].astype(np.float64)
    table.uns["spatialdata_attrs"] = {"region": "cell_circles", "region_key": "region", "instance_key": "cell_id"}
    code, err, out = run(table, "table", "--cell-type-key", "cell_type")
    assert code == 0, err
    data = load_slice(out, "table")
    assert len(data.cell_ids) == N_CELLS
    assert sum(t is None for t in data.cell_types) == N_CELLS // 5 and load_manifest(out)["slices"]["table"]["has_cell_type"]


def test_cell_ids_repeated_across_slices_are_kept(run, cells):
    """Visium barcodes repeat across sections: the same id in two slices of one file is fine."""
    two = ad.concat([cells, cells], keys=["s1", "s2"], label="slice_id")  # sc.concat without index_unique
    assert two.obs_names.duplicated().any()
    code, err, out = run(two, "sections", "--slice-key", "slice_id")
    assert code == 0, err
    manifest = load_manifest(out)
    assert {s: e["n_cells"] for s, e in manifest["slices"].items()} == {"s1": N_CELLS, "s2": N_CELLS}


def test_ensembl_var_names_preprocess_and_symbols_are_pointed_to(run, cells, tmp_path):
    """CELLxGENE-style var: Ensembl ids as var_names, symbols in a column. The file preprocesses on
    its own ids; a gene list of symbols is refused with the column that holds them named."""
    adata = cells.copy()
    adata.var["feature_name"] = pd.Categorical(adata.var_names)
    adata.var_names = [f"ENSMUSG{i:011d}" for i in range(adata.n_vars)]
    code, err, out = run(adata, "ensembl")
    assert code == 0, err
    assert len(load_slice(out, "ensembl").cell_ids) == N_CELLS
    symbols = tmp_path / "symbols.txt"
    symbols.write_text("\n".join(cells.var_names[:20]))
    code, err, out = run(adata, "ensembl_symbols", "--gene-list", symbols)
    assert code == 1 and "ensembl_symbols.h5ad: no gene of the gene list" in err
    assert "var column 'feature_name' holds 20 of them" in err and "adata.var_names = adata.var['feature_name']" in err
    assert_nothing_written(out)


# -- the list of issue 35: each refused (or reported) as it should be --------------------------------
@pytest.mark.parametrize("value", ["text", "category"])
def test_coordinates_frame_with_non_numeric_column_refused(run, cells, value):
    adata = cells.copy()
    xy = cells.obsm["spatial"]
    y = xy[:, 1].astype(str) if value == "text" else pd.Categorical(xy[:, 1].astype(str))
    adata.obsm["spatial"] = _frame({"x": xy[:, 0], "y": y}, adata)
    code, err, out = run(adata, "frame_text")
    assert code == 1 and "frame_text.h5ad: obsm['spatial']: column 'y' of the coordinates is not numeric" in err
    assert_nothing_written(out)


def test_file_with_no_cells_refused(run, cells):
    code, err, out = run(cells[:0].copy(), "no_cells")
    assert code == 1 and "no_cells.h5ad: the file holds no cells" in err
    assert_nothing_written(out)


def test_duplicated_cell_ids_refused(run, cells):
    adata = cells.copy()
    names = list(adata.obs_names)
    names[5] = names[9] = names[0]
    adata.obs_names = names
    code, err, out = run(adata, "dup_ids")
    assert code == 1
    assert f"dup_ids.h5ad: 1 cell id(s) used by more than one cell of a slice: '{names[0]}' (x3)" in err
    assert "adata.obs_names_make_unique()" in err
    assert_nothing_written(out)


def test_duplicated_cell_ids_within_a_slice_name_the_slice(run, cells):
    two = ad.concat([cells, cells], keys=["s1", "s2"], label="slice_id", index_unique="-")
    names = list(two.obs_names)
    names[N_CELLS + 1] = names[N_CELLS]
    two.obs_names = names
    code, err, out = run(two, "dup_in_slice", "--slice-key", "slice_id")
    assert code == 1 and f"'{names[N_CELLS]}' (x2 in slice 's2')" in err
    assert_nothing_written(out)


def test_empty_cell_id_refused(run, cells):
    adata = cells.copy()
    adata.obs_names = list(adata.obs_names[:3]) + [""] + list(adata.obs_names[4:])
    code, err, out = run(adata, "empty_id")
    assert code == 1 and "empty_id.h5ad: 1 cell(s) with an empty id in obs_names (row(s) 3)" in err
    assert_nothing_written(out)
    missing = cells.copy()  # a missing value in a nullable-string index is no id either
    missing.obs.index = pd.Index([None] + list(cells.obs_names[1:]), dtype="string")
    with ad.settings.override(allow_write_nullable_strings=True):
        code, err, out = run(missing, "missing_id")
    assert code == 1 and "missing_id.h5ad: 1 cell(s) with an empty id in obs_names (row(s) 0)" in err
    assert_nothing_written(out)


def test_slice_whose_cells_sit_at_one_point_refused(run, cells):
    two = ad.concat([cells, cells], keys=["s1", "s2"], label="slice_id", index_unique="-")
    two.obsm["spatial"][N_CELLS:] = [12.5, 3.0]
    code, err, out = run(two, "one_point", "--slice-key", "slice_id")
    assert code == 1
    assert f"one_point.h5ad: all {N_CELLS} cells of slice 's2' sit at one point (12.5, 3)" in err
    assert_nothing_written(out)


@pytest.mark.parametrize("column", ["categorical", "float", "nullable"])
def test_cell_type_column_all_missing_refused(run, cells, column):
    adata = cells.copy()
    adata.obs["annotation"] = {
        "categorical": pd.Categorical([None] * N_CELLS, categories=["Astro"]),
        "float": np.full(N_CELLS, np.nan),
        "nullable": pd.array([None] * N_CELLS, dtype="string"),
    }[column]
    code, err, out = run(adata, "no_types", "--cell-type-key", "annotation")
    assert code == 1
    assert "no_types.h5ad: obs['annotation'] (--cell-type-key) is missing in every one of its 120 cells" in err
    assert_nothing_written(out)


def test_gene_matching_two_by_case_reported_once_as_ambiguous(run, cells, tmp_path, caplog):
    adata = cells.copy()
    names = list(adata.var_names)
    names[names.index("Sst")] = "SST"
    names[names.index("Vip")] = "sst"  # Sst and Vip are both real genes of the panel; now two spellings of one
    adata.var_names = names
    gene_list = tmp_path / "genes.txt"
    gene_list.write_text("Sst\nGad1\nNotAGene\n")
    with caplog.at_level(logging.WARNING):
        code, err, out = run(adata, "two_spellings", "--gene-list", gene_list)
    assert code == 0, err
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    ambiguous = [w for w in warnings if "matches 2 genes of the file ignoring case (SST, sst)" in w]
    assert len(ambiguous) == 1 and "two_spellings.h5ad: gene Sst" in ambiguous[0]
    absent = [w for w in warnings if "not in its panel" in w]
    assert len(absent) == 1 and absent[0].endswith(": NotAGene")  # not reported there as well
    source = load_manifest(out)["platforms"]["p"]["sources"][0]
    assert source["ambiguous_genes"] == {"Sst": ["SST", "sst"]}
    assert source["unmatched_genes"] == ["Sst", "NotAGene"] and source["measured_genes"] == ["Gad1"]


def test_zarr_store_refused_with_how_to_write_h5ad(tmp_path, capsys):
    store = tmp_path / "sample.zarr"
    (store / "tables").mkdir(parents=True)
    (store / "zarr.json").write_text("{}")
    assert cli_main(["preprocess", str(store), "--platform", "p", "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "sample.zarr: a zarr store, not an h5ad file" in err and "write_h5ad" in err
    assert_nothing_written(tmp_path / "out")


# -- the same checks for a user's file given to `sample --data` ----------------------------------------
def test_user_data_takes_a_coordinate_frame_and_refuses_what_preprocess_refuses(cells, tmp_path):
    from alphastomics.errors import InputError
    from alphastomics.user_data import read_user_h5ad

    genes = list(cells.var_names)
    adata = cells.copy()
    adata.obsm["spatial"] = _frame({"x": cells.obsm["spatial"][:, 0], "y": cells.obsm["spatial"][:, 1]}, adata)
    adata.write_h5ad(tmp_path / "frame.h5ad")
    user = read_user_h5ad(tmp_path / "frame.h5ad", genes, "library_size_log1p")
    np.testing.assert_allclose(user.slices[0].coords[:, :2], cells.obsm["spatial"], rtol=1e-6)
    cells[:0].copy().write_h5ad(tmp_path / "none.h5ad")
    with pytest.raises(InputError, match="none.h5ad: the file holds no cells"):
        read_user_h5ad(tmp_path / "none.h5ad", genes, "library_size_log1p")
    dup = cells.copy()
    dup.obs_names = [cells.obs_names[0]] * 2 + list(cells.obs_names[2:])
    dup.write_h5ad(tmp_path / "dup.h5ad")
    with pytest.raises(InputError, match=r"dup.h5ad: 1 cell id\(s\) used by more than one cell"):
        read_user_h5ad(tmp_path / "dup.h5ad", genes, "library_size_log1p")
