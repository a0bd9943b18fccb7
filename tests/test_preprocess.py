"""``alphastomics preprocess`` and ``gene-list`` on real bundled data and small synthetic files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from alphastomics.cli import main as cli_main
from alphastomics.io.manifest import load_manifest
from alphastomics.io.files import is_temp_file
from alphastomics.io.shards import load_slice

REPO = Path(__file__).resolve().parents[1]
STARMAP = sorted((REPO / "resources" / "starmap_mpfc").glob("starmap_mpfc_*.h5ad"))
STARMAP_GENES = REPO / "resources" / "starmap_mpfc" / "genes.txt"
SHARED = REPO / "tests" / "data"  # copies of two real datasets with other panels (see SOURCE.md there)
SEQFISH = sorted((SHARED / "seqfish_mouse_embryo").glob("*.h5ad"))
BREAST = sorted((SHARED / "st_breast_cancer_layers").glob("*.h5ad"))
sys.path.insert(0, str(REPO / "benchmarks"))


def write_h5ad(path: Path, X, genes, slices=None, cell_types=None, coords=None, layers=None) -> Path:
    n = X.shape[0]
    obs = pd.DataFrame(index=[f"{path.stem}_cell{i}" for i in range(n)])
    if slices is not None:
        obs["slice_id"] = pd.Categorical(slices)
    if cell_types is not None:
        obs["cell_type"] = pd.Categorical(cell_types)
    if coords is None:
        coords = np.stack([np.arange(n), np.arange(n) % 7], axis=1).astype(np.float32)
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=list(genes)), obsm={"spatial": coords}, layers=layers or {})
    adata.write_h5ad(path)
    return path


def counts(n: int, g: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.poisson(1.5, size=(n, g)).astype(np.float32)


def preprocess(*args) -> int:
    return cli_main(["preprocess", *map(str, args)])


def shard_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.parquet"))


# -- real data ----------------------------------------------------------------------------------
def test_starmap_real_data(tmp_path):
    out = tmp_path / "starmap"
    assert preprocess(*STARMAP, "--platform", "starmap", "--out", out, "--gene-list", STARMAP_GENES,
                      "--slice-key", "slice_id", "--cell-type-key", "cell_type", "--dataset", "starmap_mpfc") == 0
    manifest = load_manifest(out)
    assert manifest["dataset"] == "starmap_mpfc" and len(manifest["genes"]) == 166
    assert set(manifest["slices"]) == {"20180417_BZ5_control", "20180419_BZ9_control", "20180424_BZ14_control"}
    platform = manifest["platforms"]["starmap"]
    assert platform["normalization"] == {"requested": "auto", "applied": "library_size_log1p", "target_sum": 10000.0}
    assert [s["n_obs"] for s in platform["sources"]] == [1049, 1053, 1088]
    assert all(len(s["sha256"]) == 64 and s["size"] > 0 for s in platform["sources"])
    entry = manifest["slices"]["20180417_BZ5_control"]
    assert entry["n_cells"] == 1049 and entry["n_dims"] == 2 and entry["has_cell_type"]

    data = load_slice(out, "20180417_BZ5_control")
    raw = ad.read_h5ad(STARMAP[0])
    expected = np.log1p(raw.X / raw.X.sum(axis=1, keepdims=True) * 1e4)
    np.testing.assert_allclose(data.expression, expected[:, [list(raw.var_names).index(g) for g in data.genes]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.coords[:, :2], raw.obsm["spatial"])
    assert (data.coords[:, 2] == 0).all() and data.gene_mask.all()
    assert list(data.cell_types) == list(raw.obs["cell_type"].astype(str))
    assert list(data.cell_ids) == list(raw.obs_names)
    bounds = entry["bounds"]
    np.testing.assert_allclose(bounds["min"][:2], raw.obsm["spatial"].min(axis=0), rtol=1e-6)


AWKWARD_SLICES = ["mouse 5 bregma1.5", "mäus 14/bregma2.0", "animal7_bregma0.16"]


def test_slice_ids_of_any_spelling_are_kept_and_their_file_keys_recorded(tmp_path):
    """Issue 10: ids with spaces, dots, slashes and umlauts stay the user's ids in the manifest;
    shard files are named by the id's file key, which the manifest records beside it."""
    from alphastomics.io.names import slice_file_key
    from alphastomics.preprocess import slice_ids_in_file

    slices = np.repeat(AWKWARD_SLICES, 10)
    path = write_h5ad(tmp_path / "in.h5ad", counts(30, 4), ["a", "b", "c", "d"], slices=slices)
    assert slice_ids_in_file(path, "slice_id") == sorted(AWKWARD_SLICES)
    assert slice_ids_in_file(path, None) == ["in"]  # without a slice key the file is one slice, named after it
    out = tmp_path / "out"
    assert preprocess(path, "--platform", "p", "--out", out, "--slice-key", "slice_id") == 0
    manifest = load_manifest(out)
    assert sorted(manifest["slices"]) == sorted(AWKWARD_SLICES)
    for slice_id, entry in manifest["slices"].items():
        assert entry["file_key"] == slice_file_key(slice_id)
        assert all(Path(s["path"]).name.startswith(entry["file_key"] + "-") for s in entry["shards"])
        assert load_slice(out, slice_id).n_dims == 2
    assert not any(p.name.startswith("m") and "/" in p.name for p in out.rglob("*"))
    assert {p.parent for p in out.rglob("*.parquet")} == {out}  # the slash made no sub-folder


def test_slice_ids_whose_file_names_collide_are_refused_before_writing(tmp_path, capsys):
    from alphastomics.io.names import slice_file_key

    clash = slice_file_key("a b")  # an id spelling another id's file key
    path = write_h5ad(tmp_path / "in.h5ad", counts(20, 3), ["a", "b", "c"], slices=["a b"] * 10 + [clash] * 10)
    out = tmp_path / "out"
    assert preprocess(path, "--platform", "p", "--out", out, "--slice-key", "slice_id") == 1
    assert "'a b'" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_library_size_uses_all_genes_of_the_file(tmp_path):
    X = counts(40, 6)
    X[:, 5] += 50  # a gene outside the list carries most counts
    path = write_h5ad(tmp_path / "f.h5ad", X, ["G0", "G1", "G2", "G3", "G4", "G5"])
    gene_list = tmp_path / "genes.txt"
    gene_list.write_text("G2\nG0\n")
    assert preprocess(path, "--platform", "p", "--out", tmp_path / "out", "--gene-list", gene_list) == 0
    data = load_slice(tmp_path / "out", "f")
    expected = np.log1p(X / X.sum(axis=1, keepdims=True) * 1e4)[:, [2, 0]]
    np.testing.assert_allclose(data.expression, expected, rtol=1e-5)
    assert data.genes == ["G2", "G0"]


def test_two_real_platforms_with_union_gene_list(tmp_path):
    """STARmap (166 genes, counts) and seqFISH (351 genes, normalised) as two platforms of one dataset."""
    results = tmp_path / "results" / "multi"
    genes = results / "genes.txt"
    assert cli_main(["gene-list", *map(str, STARMAP[:1] + SEQFISH[:1]), "--mode", "union", "--out", str(genes)]) == 0
    gene_list = genes.read_text().split()
    starmap_panel = set(ad.read_h5ad(STARMAP[0], backed="r").var_names)
    seqfish_raw = ad.read_h5ad(SEQFISH[0])
    seqfish_panel = set(seqfish_raw.var_names)
    lower = lambda genes_: {g.lower() for g in genes_}  # noqa: E731
    assert lower(gene_list) == lower(starmap_panel) | lower(seqfish_panel)
    assert len(gene_list) == len(set(gene_list))

    per_file = []
    for platform, path, extra in [("starmap", STARMAP[0], ["--cell-type-key", "cell_type"]),
                                  ("seqfish", SEQFISH[0], ["--cell-type-key", "cell_type"])]:
        shard_dir = results / "shards" / platform
        manifest = shard_dir / f"{path.stem}.manifest.json"
        assert preprocess(path, "--platform", platform, "--out", shard_dir, "--manifest", manifest, "--gene-list", genes,
                          "--slice-key", "slice_id", "--dataset", "multi", *extra) == 0
        per_file.append(manifest)
    assert cli_main(["manifest", *map(str, per_file), "--out", str(results / "manifest.json")]) == 0

    merged = load_manifest(results)
    assert merged["genes"] == gene_list
    assert merged["platforms"]["seqfish"]["normalization"]["applied"] == "none"  # normalised values kept as they are
    assert merged["platforms"]["starmap"]["normalization"]["applied"] == "library_size_log1p"
    for slice_id, panel in [("20180417_BZ5_control", starmap_panel), ("embryo2_z2", seqfish_panel)]:
        data = load_slice(results, slice_id)
        expected_mask = np.array([g.lower() in lower(panel) for g in gene_list])
        np.testing.assert_array_equal(data.gene_mask, expected_mask)
        assert sorted(merged["platforms"][data.platform]["measured_genes"]) == sorted(np.array(gene_list)[expected_mask])
        assert (data.expression[:, ~data.gene_mask] == 0).all()
        assert data.expression[:, data.gene_mask].any()
        unmatched = merged["platforms"][data.platform]["sources"][0]["unmatched_genes"]
        assert sorted(unmatched) == sorted(np.array(gene_list)[~expected_mask])
    # seqFISH values pass through unchanged (normalisation auto on non-integer data)
    seq = load_slice(results, "embryo2_z2")
    columns = [list(seqfish_raw.var_names).index(g) for g in np.array(gene_list)[seq.gene_mask]]
    np.testing.assert_allclose(seq.expression[:, seq.gene_mask], seqfish_raw.X.toarray()[:, columns], rtol=1e-6)


def test_breast_cancer_layers_different_panels_in_one_platform(tmp_path):
    """Consecutive ST layers with different panels: union list, each slice masked by its own panel."""
    files = BREAST[:2]
    out = tmp_path / "st"
    assert preprocess(*files, "--platform", "st", "--out", out, "--gene-list", "union", "--slice-key", "slice_id",
                      "--chunk-size", "100") == 0
    manifest = load_manifest(out)
    panels = [set(ad.read_h5ad(f, backed="r").var_names) for f in files]
    assert set(manifest["genes"]) == panels[0] | panels[1]
    assert set(manifest["platforms"]["st"]["measured_genes"]) == panels[0] & panels[1]
    for path, panel, slice_id in zip(files, panels, ["layer1", "layer2"]):
        data = load_slice(out, slice_id)
        assert data.gene_mask.sum() == len(panel)
        assert (data.expression[:, ~data.gene_mask] == 0).all()
        assert data.cell_types is None


# -- matrix kinds, options ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["csr", "csc", "layer"])
def test_sparse_and_layer_inputs_match_dense(tmp_path, kind):
    X = counts(300, 12, seed=1)
    X[X < 2] = 0  # sparse-ish
    slices = np.repeat(["s1", "s2", "s3"], 100)
    rng = np.random.default_rng(0)
    slices = slices[rng.permutation(300)]  # interleaved slices across chunks
    genes = [f"G{i}" for i in range(12)]
    dense = write_h5ad(tmp_path / "dense.h5ad", X, genes, slices=slices)
    if kind == "layer":
        other = write_h5ad(tmp_path / "other.h5ad", np.zeros_like(X), genes, slices=slices, layers={"counts": sp.csr_matrix(X)})
    else:
        other = write_h5ad(tmp_path / "other.h5ad", sp.csr_matrix(X) if kind == "csr" else sp.csc_matrix(X), genes, slices=slices)
    common = ["--platform", "p", "--slice-key", "slice_id", "--chunk-size", "37"]
    assert preprocess(dense, "--out", tmp_path / "a", *common) == 0
    assert preprocess(other, "--out", tmp_path / "b", *common, *(["--layer", "counts"] if kind == "layer" else [])) == 0
    for slice_id in ("s1", "s2", "s3"):
        a, b = load_slice(tmp_path / "a", slice_id), load_slice(tmp_path / "b", slice_id)
        np.testing.assert_array_equal(a.expression, b.expression)
        assert [c.replace("dense_", "") for c in a.cell_ids] == [c.replace("other_", "") for c in b.cell_ids]
        rows = np.flatnonzero(slices == slice_id)
        np.testing.assert_allclose(a.expression, np.log1p(X[rows] / X[rows].sum(1, keepdims=True) * 1e4), rtol=1e-5)


def test_shard_size_limit_normalization_and_z_options(tmp_path):
    X = counts(50, 4) + 0.5  # not integers: auto leaves them, log1p applies
    path = write_h5ad(tmp_path / "f.h5ad", X, ["a", "b", "c", "d"])
    out = tmp_path / "out"
    assert preprocess(path, "--platform", "p", "--out", out, "--max-cells-per-shard", "20", "--z-value", "3.5") == 0
    manifest = load_manifest(out)
    assert [s["n_rows"] for s in manifest["slices"]["f"]["shards"]] == [20, 20, 10]
    data = load_slice(out, "f")
    np.testing.assert_allclose(data.expression, X, rtol=1e-6)
    assert (data.coords[:, 2] == 3.5).all() and data.n_dims == 2

    adata = ad.read_h5ad(path)
    adata.obs["depth"] = np.arange(50, dtype=float)
    adata.write_h5ad(path)
    assert preprocess(path, "--platform", "p", "--out", out, "--normalization", "log1p", "--z-key", "depth") == 0
    data = load_slice(out, "f")
    np.testing.assert_allclose(data.expression, np.log1p(X), rtol=1e-6)
    np.testing.assert_array_equal(data.coords[:, 2], np.arange(50))
    assert shard_files(out) == [out / "f-0000.parquet"]  # parts of the earlier, larger run are gone
    assert preprocess(path, "--platform", "p", "--out", out, "--normalization", "none") == 0
    np.testing.assert_allclose(load_slice(out, "f").expression, X)


def test_three_d_coordinates(tmp_path):
    coords = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    path = write_h5ad(tmp_path / "vol.h5ad", counts(30, 3), ["a", "b", "c"], coords=coords)
    assert preprocess(path, "--platform", "p", "--out", tmp_path / "o") == 0
    data = load_slice(tmp_path / "o", "vol")
    assert data.n_dims == 3
    np.testing.assert_allclose(data.coords, coords)


def test_case_insensitive_matching_and_unmatched_genes_reported(tmp_path, caplog):
    path = write_h5ad(tmp_path / "f.h5ad", counts(10, 3), ["Gapdh", "ACTB", "Sox2"])
    gene_list = tmp_path / "genes.txt"
    gene_list.write_text("GAPDH\nActb\nSox2\nMissing1\n\n# comment\nSox2\n")
    with caplog.at_level("WARNING"):
        assert preprocess(path, "--platform", "p", "--out", tmp_path / "o", "--gene-list", gene_list) == 0
    manifest = load_manifest(tmp_path / "o")
    assert manifest["genes"] == ["GAPDH", "Actb", "Sox2", "Missing1"]
    source = manifest["platforms"]["p"]["sources"][0]
    assert source["unmatched_genes"] == ["Missing1"]
    assert source["case_insensitive_matches"] == [["GAPDH", "Gapdh"], ["Actb", "ACTB"]]
    assert manifest["platforms"]["p"]["measured_genes"] == ["GAPDH", "Actb", "Sox2"]
    assert "Missing1" in caplog.text


def test_gene_list_command_modes(tmp_path):
    a = write_h5ad(tmp_path / "a.h5ad", counts(5, 3), ["X1", "X2", "X3"])
    b = write_h5ad(tmp_path / "b.h5ad", counts(5, 3), ["x3", "X2", "X4"])
    out = tmp_path / "genes.txt"
    assert cli_main(["gene-list", str(a), str(b), "--mode", "intersection", "--out", str(out)]) == 0
    assert out.read_text() == "X2\nX3\n"
    assert cli_main(["gene-list", str(a), str(b), "--mode", "union", "--out", str(out)]) == 0
    assert out.read_text() == "X1\nX2\nX3\nX4\n"
    given = tmp_path / "given.txt"
    given.write_text("  X4 \nX1\nX1\n")
    assert cli_main(["gene-list", str(a), "--mode", str(given), "--out", str(out)]) == 0
    assert out.read_text() == "X4\nX1\n"


def test_direct_output_usable_as_dataset_dir_and_rerun_is_identical(tmp_path):
    out = tmp_path / "o"
    args = [STARMAP[1], "--platform", "starmap", "--out", out, "--slice-key", "slice_id", "--gene-list", STARMAP_GENES]
    assert preprocess(*args) == 0
    first = json.loads((out / "manifest.json").read_text())
    assert preprocess(*args) == 0
    second = json.loads((out / "manifest.json").read_text())
    assert first["slices"] == second["slices"]  # deterministic shards (same sha256)
    assert load_slice(out, "20180419_BZ9_control").expression.shape == (1053, 166)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# -- interruption -------------------------------------------------------------------------------
def _start_and_interrupt(tmp_path: Path, sig: int) -> tuple[Path, Path, int]:
    """Start preprocess on a synthetic file, send ``sig`` once shard temporaries exist."""
    from make_synthetic_h5ad import make_synthetic_h5ad

    h5ad = make_synthetic_h5ad(tmp_path / "big.h5ad", 60_000, n_genes=200, n_slices=2)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "alphastomics.cli", "preprocess", str(h5ad), "--platform", "p", "--out", str(out),
               "--slice-key", "slice_id", "--chunk-size", "500"]
    log = open(tmp_path / "stderr.log", "wb")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, cwd=REPO)
    deadline = time.time() + 60
    while time.time() < deadline and not (out.is_dir() and any(is_temp_file(p) for p in out.iterdir())):
        time.sleep(0.05)
    os.kill(process.pid, sig)
    code = process.wait()
    log.close()
    return h5ad, out, code


def test_kill_9_leaves_only_hidden_temporaries_and_rerun_cleans(tmp_path):
    h5ad, out, _ = _start_and_interrupt(tmp_path, signal.SIGKILL)
    leftovers = list(out.iterdir())
    assert leftovers and all(is_temp_file(p) for p in leftovers), leftovers  # nothing that looks complete
    with pytest.raises(Exception, match="manifest not found"):
        load_manifest(out)
    assert preprocess(h5ad, "--platform", "p", "--out", out, "--slice-key", "slice_id") == 0
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "slice0-0000.parquet", "slice1-0000.parquet"]
    assert sum(pq.read_metadata(p).num_rows for p in shard_files(out)) == 60_000


def test_sigterm_cleans_up_its_temporaries(tmp_path):
    _, out, code = _start_and_interrupt(tmp_path, signal.SIGTERM)
    stderr = (tmp_path / "stderr.log").read_text(errors="replace")[-3000:]
    assert code == 128 + signal.SIGTERM, stderr
    assert list(out.iterdir()) == [], stderr


def test_slabs_cut_a_volume_into_serial_sections_of_equal_size(tmp_path):
    """A 3D volume (here the bundled BDTNP slab0) cut into 3 slabs along z: equal cell counts, disjoint
    z ranges, ids <slice>_slab<i> from the low end, and the workflow's id check agrees."""
    from alphastomics.preprocess import slice_ids_in_file

    source = REPO / "resources/bdtnp_drosophila/bdtnp_slab0.h5ad"
    out = tmp_path / "out"
    assert preprocess(source, "--platform", "insitu", "--out", out, "--slice-key", "slice_id", "--normalization", "none",
                      "--slabs", "z:3") == 0
    manifest = load_manifest(out)
    ids = ["slab0_slab0", "slab0_slab1", "slab0_slab2"]
    assert sorted(manifest["slices"]) == ids == slice_ids_in_file(source, "slice_id", ("z", 3))
    counts_ = [manifest["slices"][s]["n_cells"] for s in ids]
    assert sum(counts_) == ad.read_h5ad(source).n_obs and max(counts_) - min(counts_) <= 1
    z = [load_slice(out, s).coords[:, 2] for s in ids]
    assert z[0].max() <= z[1].min() and z[1].max() <= z[2].min()
    assert preprocess(source, "--platform", "insitu", "--out", tmp_path / "bad", "--slabs", "w:3") == 1
