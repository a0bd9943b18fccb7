"""Every bad input of issue 3: non-zero exit, a message naming the file and the problem, no output left."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

from alphastomics.cli import main as cli_main
from alphastomics.io.manifest import load_manifest

REPO = Path(__file__).resolve().parents[1]
STARMAP = sorted((REPO / "resources" / "starmap_mpfc").glob("starmap_mpfc_*.h5ad"))


def write_h5ad(path: Path, X=None, genes=("A", "B", "C"), coords=None, slices=None) -> Path:
    X = np.random.default_rng(0).poisson(2.0, size=(20, len(genes))).astype(np.float32) if X is None else X
    n = X.shape[0]
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n)])
    if slices is not None:
        obs["slice_id"] = pd.Categorical(slices)
    coords = np.stack([np.arange(n), np.arange(n)], axis=1).astype(np.float32) if coords is None else coords
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(genes)), obsm={"spatial": coords})
    adata.write_h5ad(path)
    return path


@pytest.fixture
def run(tmp_path, capsys):
    """Run preprocess into tmp_path/out; return (exit code, stderr, output dir)."""
    out = tmp_path / "out"

    def _run(*args):
        code = cli_main(["preprocess", *map(str, args), "--platform", "p", "--out", str(out)])
        return code, capsys.readouterr().err, out

    return _run


def assert_nothing_written(out: Path) -> None:
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())


def test_missing_file(run, tmp_path):
    code, err, out = run(tmp_path / "absent.h5ad")
    assert code == 1 and "absent.h5ad: file not found" in err
    assert_nothing_written(out)


def test_missing_file_among_good_ones_fails_before_writing(run, tmp_path):
    code, err, out = run(STARMAP[0], tmp_path / "absent.h5ad", "--slice-key", "slice_id")
    assert code == 1 and "absent.h5ad: file not found" in err
    assert_nothing_written(out)


def test_not_an_h5ad_file(run, tmp_path):
    text = tmp_path / "notes.h5ad"
    text.write_text("just text")
    code, err, out = run(text)
    assert code == 1 and "notes.h5ad: not an h5ad file" in err
    plain = tmp_path / "plain.h5ad"
    with h5py.File(plain, "w") as h5:
        h5["numbers"] = np.arange(3)
    code, err, _ = run(plain)
    assert code == 1 and "plain.h5ad: not an h5ad file" in err and "obs" in err
    assert_nothing_written(out)


def test_missing_obsm_key_lists_keys_present(run):
    code, err, out = run(STARMAP[0], "--position-key", "ccf")
    assert code == 1
    assert "starmap_mpfc_20180417_BZ5_control.h5ad: obsm has no key 'ccf'" in err and "keys present: spatial" in err
    assert_nothing_written(out)


@pytest.mark.parametrize("width", [1, 4])
def test_coordinates_of_wrong_width(run, tmp_path, width):
    path = write_h5ad(tmp_path / "wide.h5ad", coords=np.zeros((20, width), np.float32))
    code, err, out = run(path)
    assert code == 1 and "wide.h5ad: obsm['spatial'] has shape (20, %d)" % width in err
    assert_nothing_written(out)


def _coords_with_invalid() -> np.ndarray:
    coords = np.stack([np.arange(20), np.arange(20)], axis=1).astype(np.float32)
    coords[3, 0], coords[7, 1] = np.nan, np.inf
    return coords


def test_invalid_coordinates_dropped_and_counted(run, tmp_path):
    path = write_h5ad(tmp_path / "nan.h5ad", coords=_coords_with_invalid())
    code, err, out = run(path)
    assert code == 0
    manifest = load_manifest(out)
    assert manifest["platforms"]["p"]["sources"][0]["dropped_invalid_positions"] == 2
    assert manifest["slices"]["nan"]["n_cells"] == 18
    assert manifest["slices"]["nan"]["dropped_invalid_positions"] == 2


def test_invalid_coordinates_error_when_asked(run, tmp_path):
    path = write_h5ad(tmp_path / "nan.h5ad", coords=_coords_with_invalid())
    code, err, out = run(path, "--on-invalid", "error")
    assert code == 1 and "nan.h5ad: 2 cell(s) with NaN or infinite coordinates" in err and "cell3" in err
    assert_nothing_written(out)


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_duplicated_gene_names(run, tmp_path):
    path = write_h5ad(tmp_path / "dup.h5ad", genes=("A", "B", "A"))
    code, err, out = run(path)
    assert code == 1 and "dup.h5ad: duplicated gene names in var: A (x2)" in err
    assert_nothing_written(out)


def test_negative_counts(run, tmp_path):
    X = np.random.default_rng(0).poisson(2.0, size=(20, 3)).astype(np.float32)
    X[5, 1] = -3
    path = write_h5ad(tmp_path / "neg.h5ad", X=X)
    code, err, out = run(path)
    assert code == 1 and "neg.h5ad" in err and "negative expression values" in err and "counts are expected" in err
    assert_nothing_written(out)
    code, err, _ = run(path, "--normalization", "log1p")
    assert code == 1 and "negative expression values" in err
    assert_nothing_written(out)
    assert run(path, "--normalization", "none")[0] == 0  # negatives are fine in already-normalised data


def test_negative_counts_missed_by_the_sample_are_found_while_writing(run, tmp_path, monkeypatch):
    """Large files are only sampled up front; the full pass still refuses negatives anywhere."""
    from alphastomics.io.h5ad import Matrix

    monkeypatch.setattr(Matrix, "sample_values", lambda self, *a, **k: np.array([1.0, 2.0], np.float32))
    X = np.random.default_rng(0).poisson(2.0, size=(400, 3)).astype(np.float32)
    X[397, 0] = -1
    path = write_h5ad(tmp_path / "late.h5ad", X=X)
    code, err, out = run(path, "--chunk-size", "50")
    assert code == 1 and "late.h5ad" in err and "rows 350+" in err
    assert_nothing_written(out)


def test_gene_list_without_overlap(run, tmp_path):
    genes = tmp_path / "genes.txt"
    genes.write_text("Zfp1\nZfp2\n")
    code, err, out = run(STARMAP[0], "--gene-list", genes)
    assert code == 1 and "starmap_mpfc_20180417_BZ5_control.h5ad: no gene of the gene list" in err
    assert_nothing_written(out)


def test_empty_gene_list_file(run, tmp_path):
    genes = tmp_path / "genes.txt"
    genes.write_text("\n  \n# only a comment\n")
    code, err, out = run(STARMAP[0], "--gene-list", genes)
    assert code == 1 and "genes.txt: gene list file is empty" in err
    assert_nothing_written(out)


def test_missing_gene_list_file(run, tmp_path):
    code, err, out = run(STARMAP[0], "--gene-list", tmp_path / "nope.txt")
    assert code == 1 and "nope.txt: gene list file not found" in err
    assert_nothing_written(out)


def test_slice_left_with_zero_cells(run, tmp_path):
    coords = np.stack([np.arange(20), np.arange(20)], axis=1).astype(np.float32)
    slices = ["s1"] * 15 + ["s2"] * 5
    coords[15:, 0] = np.nan  # every cell of s2
    path = write_h5ad(tmp_path / "empty.h5ad", coords=coords, slices=slices)
    code, err, out = run(path, "--slice-key", "slice_id")
    assert code == 1 and "empty.h5ad: slice(s) 's2' left with zero cells" in err
    assert_nothing_written(out)


def test_two_files_claiming_the_same_slice(run, tmp_path):
    first = write_h5ad(tmp_path / "a.h5ad", slices=["s1"] * 20)
    second = write_h5ad(tmp_path / "b.h5ad", slices=["s1"] * 20)
    code, err, out = run(first, second, "--slice-key", "slice_id")
    assert code == 1 and "slice id 's1' is claimed by two files" in err and "a.h5ad" in err and "b.h5ad" in err
    assert_nothing_written(out)


def test_missing_obs_keys_and_layer(run):
    code, err, out = run(STARMAP[0], "--slice-key", "section")
    assert code == 1 and "obs has no column 'section' (--slice-key)" in err and "slice_id" in err
    code, err, _ = run(STARMAP[0], "--cell-type-key", "celltype")
    assert code == 1 and "obs has no column 'celltype' (--cell-type-key)" in err
    code, err, _ = run(STARMAP[0], "--layer", "counts")
    assert code == 1 and "has no layer 'counts'" in err
    assert_nothing_written(out)


def test_nan_expression(run, tmp_path):
    X = np.ones((20, 3), np.float32) * 0.5
    X[2, 2] = np.nan
    path = write_h5ad(tmp_path / "nanx.h5ad", X=X)
    code, err, out = run(path, "--normalization", "none")
    assert code == 1 and "nanx.h5ad" in err and "NaN or infinite" in err
    assert_nothing_written(out)


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_failed_rerun_leaves_previous_output_intact(run, tmp_path):
    """A failure after a good run leaves the good run intact (nothing is replaced before success)."""
    good = write_h5ad(tmp_path / "good.h5ad")
    assert run(good)[0] == 0
    before = sorted(p.name for p in (tmp_path / "out").iterdir())
    bad = write_h5ad(tmp_path / "good2.h5ad", genes=("A", "A", "B"))
    code, _, out = run(good, bad)
    assert code == 1
    assert sorted(p.name for p in out.iterdir()) == before
    assert load_manifest(out)["slices"]["good"]["n_cells"] == 20
