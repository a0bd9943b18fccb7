"""`gene-list --mode highly_variable:N`: the genes scanpy would choose, on the training slices only,
recorded in the manifest; bad specs refused with the reason."""

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scanpy as sc

from alphastomics.cli import main as cli_main
from alphastomics.errors import InputError
from alphastomics.gene_selection import highly_variable_genes
from alphastomics.preprocess_inputs import parse_highly_variable

REPO = Path(__file__).resolve().parents[1]
# Real ST breast cancer layers: raw counts, 7,998 and 7,713 genes, panels that differ
LAYERS = [REPO / f"tests/data/st_breast_cancer_layers/st_breast_cancer_layer{i}.h5ad" for i in (1, 2)]


@pytest.fixture
def run(capsys):
    """Run a command in this process; (exit code, stderr)."""

    def _run(*args):
        code = cli_main([str(a) for a in args])
        return code, capsys.readouterr().err

    return _run


def scanpy_choice(path: Path, genes: list[str], n_top: int) -> set[str]:
    """What a scanpy user would choose on that one file: library size over all its genes, log1p,
    then flavor='seurat' on the genes the files share."""
    adata = ad.read_h5ad(path)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata = adata[:, genes].copy()
    sc.pp.highly_variable_genes(adata, flavor="seurat", n_top_genes=n_top)
    return set(adata.var_names[adata.var["highly_variable"]])


def test_the_choice_is_scanpys_on_the_training_slices_and_never_sees_the_held_out_one():
    chosen = {}
    second = set(ad.read_h5ad(LAYERS[1], backed="r").var_names)
    candidates = [g for g in ad.read_h5ad(LAYERS[0], backed="r").var_names if g in second]
    for held_out, training in ((LAYERS[1], LAYERS[0]), (LAYERS[0], LAYERS[1])):
        genes, record = highly_variable_genes(LAYERS, 500, [held_out.stem], {})
        assert set(genes) == scanpy_choice(training, candidates, 500)
        assert record["training_slices"] == [training.stem] and record["held_out_slices"] == [held_out.stem]
        assert record["candidate_genes"] == len(candidates) and record["chosen_genes"] == 500
        assert record["training_cells"] == ad.read_h5ad(training, backed="r").n_obs
        chosen[held_out.stem] = set(genes)
    # the held-out layer decides nothing: the two choices are the two training layers' own
    assert len(chosen[LAYERS[0].stem] ^ chosen[LAYERS[1].stem]) > 100


def test_the_command_writes_the_list_and_its_record_and_the_manifest_carries_it(tmp_path, run):
    genes, record = tmp_path / "genes.txt", tmp_path / "genes.selection.json"
    options = {str(LAYERS[0]): ["--normalization", "auto"], str(LAYERS[1]): ["--normalization", "auto"]}
    code, err = run("gene-list", *LAYERS, "--mode", "highly_variable:300", "--held-out-slices", LAYERS[1].stem,
               "--file-options", json.dumps(options), "--out", genes, "--record", record)
    assert code == 0, err
    listed = genes.read_text().split()
    assert len(listed) == 300 and json.loads(record.read_text())["training_slices"] == [LAYERS[0].stem]
    shards = tmp_path / "shards"
    code, err = run("preprocess", *LAYERS, "--platform", "st", "--gene-list", genes, "--out", shards)
    assert code == 0, err
    code, err = run("manifest", shards / "manifest.json", "--gene-selection", record, "--out", tmp_path / "manifest.json")
    assert code == 0, err
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["genes"] == listed
    assert manifest["gene_selection"]["mode"] == "highly_variable:300"
    assert manifest["gene_selection"]["held_out_slices"] == [LAYERS[1].stem]
    # a record of another list is refused, not carried
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"mode": "highly_variable:10", "chosen_genes": 10}))
    code, err = run("manifest", shards / "manifest.json", "--gene-selection", other, "--out", tmp_path / "m2.json")
    assert code != 0 and "other.json" in err and "10 chosen genes" in err
    assert not (tmp_path / "m2.json").exists()


@pytest.mark.parametrize("spec", ["highly_variable:0", "highly_variable:many", "highly_variable"])
def test_a_malformed_spec_is_refused_with_the_form_to_write(spec):
    with pytest.raises(InputError, match="highly_variable:N"):
        parse_highly_variable(spec)


def test_a_held_out_slice_that_no_file_holds_is_named(tmp_path, run):
    code, err = run("gene-list", *LAYERS, "--mode", "highly_variable:50", "--held-out-slices", "layer9",
               "--out", tmp_path / "genes.txt")
    assert code != 0 and "layer9" in err
    assert not (tmp_path / "genes.txt").exists()


def test_preprocess_asked_for_highly_variable_genes_says_how_to_choose_them(tmp_path, run):
    code, err = run("preprocess", LAYERS[0], "--platform", "st", "--gene-list", "highly_variable:100", "--out", tmp_path / "s")
    assert code != 0 and "alphastomics gene-list" in err and "--held-out-slices" in err
    assert not (tmp_path / "s").exists() or not any((tmp_path / "s").iterdir())


def test_genes_without_variance_are_never_chosen():
    """Constant genes have no dispersion (NaN), and rank below every varying gene."""
    from alphastomics.gene_selection import normalised_dispersions

    rng = np.random.default_rng(0)
    mean = np.concatenate([rng.uniform(0.1, 5, 40), [2.0, 3.0]])
    variance = np.concatenate([mean[:40] * rng.uniform(0.5, 4, 40), [0.0, 0.0]])
    score = normalised_dispersions(mean, variance)
    assert np.isnan(score[-2:]).all() and np.isfinite(score[:40]).all()


def test_the_pipeline_chooses_the_genes_on_the_training_slices_and_the_manifest_records_them(tmp_path):
    """gene_list: highly_variable:N through Snakemake, up to the dataset's manifest: the held-out
    slices (test and validation) are named to the choice, the slices read as preprocessing reads them."""
    from test_workflow import STARMAP_SLICE_NAMES, STARMAP_TEST_SLICE, edit_config, run_snakemake, small_config

    configfile = small_config(tmp_path)

    def edit(config):
        starmap = config["datasets"]["starmap_mpfc"]
        starmap["gene_list"] = "highly_variable:40"
        starmap["validation_slices"] = [STARMAP_SLICE_NAMES["BZ9"]]

    edit_config(configfile, edit)
    result = run_snakemake(tmp_path, configfile, "results/starmap_mpfc/manifest.json")
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "results/starmap_mpfc/manifest.json").read_text())
    assert len(manifest["genes"]) == 40
    selection = manifest["gene_selection"]
    assert selection["mode"] == "highly_variable:40"
    assert selection["held_out_slices"] == sorted([STARMAP_TEST_SLICE, STARMAP_SLICE_NAMES["BZ9"]])
    assert selection["training_slices"] == [STARMAP_SLICE_NAMES["BZ5"]]
    assert selection["training_cells"] == manifest["slices"][STARMAP_SLICE_NAMES["BZ5"]]["n_cells"]

    edit_config(configfile, lambda config: config["datasets"]["starmap_mpfc"].update(gene_list="highly_variable:some"))
    result = run_snakemake(tmp_path, configfile, "-n")
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "datasets.starmap_mpfc.gene_list" in said and "highly_variable:N" in said
