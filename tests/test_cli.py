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


# flag -> (config key, value on the command line, value in the config file it overrides)
TRAIN_FLAGS = {
    "--training-mode": ("training.training_mode", "expr_to_pos", "joint"),
    "--data-mode": ("training.data_mode", "slice", "cell"),
    "--use-gated-attention": ("model.use_gated_attention", "true", False),
    "--gate-type": ("model.gate_type", "elementwise", "headwise"),
    "--use-moe": ("model.use_moe", "true", False),
    "--num-experts": ("model.num_experts", "3", 4),
    "--moe-top-k": ("model.moe_top_k", "1", 2),
    "--enable-masking": ("masking.enable", "true", False),
    "--expression-mask-ratio": ("masking.expression_mask_ratio", "0.2", 0.15),
    "--position-mask-ratio": ("masking.position_mask_ratio", "0.3", 0.15),
    "--batch-size": ("training.batch_size", "2", 1),
    "--epochs": ("training.epochs", "1", 50),
    "--max-steps": ("training.max_steps", "1", -1),
    "--lr": ("training.lr", "0.005", 0.001),
    "--exp-name": ("training.exp_name", "flag-test", "from-file"),
    "--strategy": ("training.strategy", "auto", "ddp"),
    "--devices": ("training.devices", "1", 2),
    "--num-nodes": ("training.num_nodes", "1", 2),
    "--precision": ("training.precision", "32", "16-mixed"),
    "--accelerator": ("training.accelerator", "cpu", "gpu"),
}


def test_train_flags_override_config(starmap_dir, tmp_path):
    """Each flag's value reaches the effective model/config.yaml over the config file's value
    (one training step on the bundled STARmap data; the file's values would not even run here)."""
    import yaml

    from alphastomics.cli import main as cli

    file_config = {"model": {"hidden_dim": 16, "num_layers": 1, "num_heads": 2}, "diffusion": {"diffusion_steps": 10}}
    for key, _, in_file in TRAIN_FLAGS.values():
        section, name = key.split(".")
        file_config.setdefault(section, {})[name] = in_file
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(file_config))
    out = tmp_path / "model"
    flags = [item for flag, (_, value, _) in TRAIN_FLAGS.items() for item in (flag, value)]
    assert cli(["train", "--data", str(starmap_dir), "--config", str(config_path), "--out", str(out),
                "--test-slices", "20180424_BZ14_control", "--no-export", *flags]) == 0
    effective = yaml.safe_load((out / "config.yaml").read_text())
    for flag, (key, value, in_file) in TRAIN_FLAGS.items():
        section, name = key.split(".")
        expected = value == "true" if isinstance(in_file, bool) else type(in_file)(value)  # the flag's text, typed
        assert effective[section][name] == expected, flag
    assert effective["model"]["hidden_dim"] == 16  # what no flag overrides stays from the file


def test_commands_that_sample_sections_keep_freed_memory_for_reuse(monkeypatch, tmp_path):
    """sample (and the other network-inference commands) set glibc's allocation options before
    running; train keeps the defaults (alphastomics.allocator)."""
    import sys

    import alphastomics.allocator as allocator
    from alphastomics.cli import COMMANDS, NETWORK_INFERENCE_COMMANDS, main

    assert NETWORK_INFERENCE_COMMANDS <= set(COMMANDS) and "train" not in NETWORK_INFERENCE_COMMANDS
    if sys.platform.startswith("linux"):
        assert allocator.reuse_freed_memory() is True
    calls = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: calls.append(1) or True)
    missing = str(tmp_path / "absent.ckpt")
    assert main(["sample", "--checkpoint", missing, "--data", missing, "--mode", "joint", "--out", str(tmp_path / "o.h5ad")]) != 0
    assert calls == [1]
