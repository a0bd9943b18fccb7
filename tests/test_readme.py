"""The README's command blocks run as written (issue 10: its "by hand" block failed at `train`).

The block is run in a scratch folder that holds the repository's bundled data and a
config/config.yaml made from the real one with a smaller model and one short epoch, so the
commands are exactly the README's and the test stays fast.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SMALL = {
    "model": {"hidden_dim": 16, "num_layers": 1, "num_heads": 2},
    "diffusion": {"diffusion_steps": 10},
    "training": {"epochs": 1, "examples_per_epoch": 2},
}


def bash_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.M | re.S)


def by_hand_block() -> str:
    blocks = [b for b in bash_blocks((REPO / "README.md").read_text(encoding="utf-8")) if "alphastomics preprocess" in b]
    assert len(blocks) == 1, "README.md should hold one bash block that runs the stages by hand"
    return blocks[0]


@pytest.fixture
def scratch_repo(tmp_path) -> Path:
    (tmp_path / "resources").symlink_to(REPO / "resources")
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    for section, values in SMALL.items():
        config[section].update(values)
    (tmp_path / "config").mkdir()
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path


def test_by_hand_block_runs_as_written(scratch_repo):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", by_hand_block()], cwd=scratch_repo, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    metrics = pd.read_csv(scratch_repo / "results/mine/BZ14.expr_to_pos.tsv", sep="\t")
    assert set(metrics["slice"]) == {"20180424_BZ14_control"} and "distance_spearman_median" in set(metrics["metric"])
    assert (scratch_repo / "results/mine/report.html").stat().st_size > 10_000
    assert "Dense" in result.stdout and "usage: alphastomics" in result.stdout  # params table and --help


# ----------------------------------------------------------------------------------------------
# issue 33: the README is a user's guide that links to docs/; its links must resolve

README_MAX_LINES = 300
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+\s+(.*)$", markdown, flags=re.M)}


def _relative_links(path: Path) -> list[tuple[Path, str]]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)  # not in code blocks
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        file, _, anchor = target.partition("#")
        out.append(((path.parent / file).resolve(), anchor))
    return out


def test_readme_is_short_and_keeps_its_quick_start():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= README_MAX_LINES
    assert "## Quick start\n\n```bash\nbash scripts/run_pipeline.sh\nbash scripts/run_tests.sh\n```\n" in text


@pytest.mark.parametrize("doc", ["README.md"] + sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md")))
def test_links_of_the_readme_and_docs_resolve(doc):
    broken = []
    for target, anchor in _relative_links(REPO / doc):
        if not target.exists():
            broken.append(f"{target.relative_to(REPO) if target.is_relative_to(REPO) else target}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target.read_text(encoding="utf-8")):
            broken.append(f"{target.relative_to(REPO)}#{anchor}: no such heading")
    assert broken == [], f"{doc}: " + "; ".join(broken)
