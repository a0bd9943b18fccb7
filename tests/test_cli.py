"""The command line: every subcommand has help; `params` prints the variant table."""

import subprocess
import sys

import pytest

from alphastomics.cli import COMMANDS

REQUIRED = ["preprocess", "train", "sample", "evaluate", "report"]


def run(*args):
    return subprocess.run([sys.executable, "-m", "alphastomics.cli", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in REQUIRED + ["params", "export", "gather", "manifest", "gene-list"]:
        assert command in result.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_has_help(command):
    result = run(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: alphastomics " + command in result.stdout


def test_sample_and_preprocess_take_the_documented_arguments():
    sample = run("sample", "--help").stdout
    for flag in ("--checkpoint", "--data", "--slice", "--mode", "--out"):
        assert flag in sample
    preprocess = run("preprocess", "--help").stdout
    for flag in ("--platform", "--out", "--gene-list", "--position-key", "--slice-key", "--cell-type-key", "--normalization"):
        assert flag in preprocess


def test_params_table_counts_active_parameters():
    result = run("params", "--num-genes", "100")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert set(rows) == {"Dense", "Gated", "MoE", "Gated+MoE"}
    total = lambda name: int(rows[name][1].replace(",", ""))  # noqa: E731
    active = lambda name: int(rows[name][2].replace(",", ""))  # noqa: E731
    assert total("Dense") == active("Dense") and total("Gated") > total("Dense")
    assert total("MoE") > active("MoE") > active("Dense")  # top-2 of 4 experts: more total, some inactive


def test_train_flags_override_config():
    result = run("train", "--help")
    for flag in ("--training-mode", "--use-gated-attention", "--gate-type", "--use-moe", "--num-experts", "--moe-top-k",
                 "--enable-masking", "--expression-mask-ratio", "--position-mask-ratio", "--batch-size", "--epochs",
                 "--lr", "--resume", "--exp-name"):
        assert flag in result.stdout, flag
