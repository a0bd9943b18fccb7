"""Shared fixtures: real bundled data preprocessed once per test session."""

from pathlib import Path

import pytest

from alphastomics.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
STARMAP = sorted((REPO / "resources/starmap_mpfc").glob("*.h5ad"))
BDTNP = sorted((REPO / "resources/bdtnp_drosophila").glob("*.h5ad"))


def preprocess_dataset(out: Path, files: list[Path], platform: str, dataset: str, *options: str) -> Path:
    """Run the same commands as the workflow: gene list, one preprocess per file, merged manifest."""
    out.mkdir(parents=True, exist_ok=True)
    assert cli(["gene-list", *map(str, files), "--mode", "intersection", "--out", str(out / "genes.txt")]) == 0
    manifests = []
    for f in files:
        manifest = out / "shards" / platform / f"{f.stem}.manifest.json"
        args = ["preprocess", str(f), "--platform", platform, "--dataset", dataset, "--gene-list", str(out / "genes.txt"),
                "--out", str(out / "shards" / platform), "--manifest", str(manifest), *options]
        assert cli(args) == 0
        manifests.append(str(manifest))
    assert cli(["manifest", *manifests, "--dataset", dataset, "--out", str(out / "manifest.json")]) == 0
    return out


@pytest.fixture(scope="session")
def starmap_dir(tmp_path_factory) -> Path:
    """STARmap mPFC, 3 real 2D slices with cell types, preprocessed into shards."""
    return preprocess_dataset(tmp_path_factory.mktemp("starmap"), STARMAP, "starmap", "starmap_mpfc",
                              "--slice-key", "slice_id", "--cell-type-key", "cell_type")


@pytest.fixture(scope="session")
def bdtnp_dir(tmp_path_factory) -> Path:
    """BDTNP embryo, 4 real 3D slabs, preprocessed into shards."""
    return preprocess_dataset(tmp_path_factory.mktemp("bdtnp"), BDTNP, "insitu", "bdtnp_drosophila",
                              "--slice-key", "slice_id", "--normalization", "none")
