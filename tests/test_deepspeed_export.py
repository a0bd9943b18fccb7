"""A real DeepSpeed ZeRO checkpoint directory, written the way Lightning's DeepSpeedStrategy writes
it, is converted by `alphastomics export` to the single model file that sampling loads.

Lightning refuses DeepSpeed on CPU, so the engine is driven directly (DeepSpeed's own CPU
accelerator) with Lightning's save call: engine.save_checkpoint(dir, client_state=checkpoint
without state_dict/optimizer_states, tag="checkpoint").

The test is skipped only where it cannot run at all, checked before the run: DeepSpeed does not
select its CPU accelerator. Any failure of the run itself is a failure.
"""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("deepspeed")


def _cannot_run_reason(env: dict) -> str | None:
    """Why DeepSpeed's CPU path cannot run on this machine, or None when it can."""
    probe = subprocess.run(
        [sys.executable, "-c", "from deepspeed.accelerator import get_accelerator; print(get_accelerator().device_name())"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]  # DeepSpeed is installed: importing it must work
    if probe.stdout.strip().splitlines()[-1:] != ["cpu"]:
        return f"DeepSpeed did not select its CPU accelerator (DS_ACCELERATOR=cpu): {probe.stdout.strip()!r}"
    return None

WRITE_ZERO_CHECKPOINT = textwrap.dedent(
    """
    import os, sys, torch
    import deepspeed
    from alphastomics.config import Config, apply_overrides
    import numpy as np
    from alphastomics.data.expression import ExpressionCodec
    from alphastomics.data.frames import CoordinateFrame
    from alphastomics.train import DiffusionModule

    out = sys.argv[1]
    # DeepSpeed's CPU backend compiles a shared-memory all-reduce op at start (a minute and more of
    # C++ on a clean machine); one process never communicates, so it is not built.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    config = apply_overrides(Config(), {"model.hidden_dim": 16, "model.num_layers": 1, "model.num_heads": 2})
    genes = ["g%d" % i for i in range(5)]
    rng = np.random.default_rng(0)
    codec = ExpressionCodec.fit([rng.random((20, 5))], [np.ones(5, dtype=bool)])
    frame = CoordinateFrame.fit("per_slice", [(rng.random((20, 3)), 2)])
    module = DiffusionModule(config.to_dict(), genes, codec.to_dict(), frame.to_dict())
    # A torch optimizer handed to DeepSpeed, as Lightning hands it the one of configure_optimizers
    # (no DeepSpeed op to compile: its own CPU Adam took minutes to build on a clean machine).
    ds_config = {"train_batch_size": 1, "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True}
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config)
    client_state = {"hyper_parameters": dict(module.hparams), "global_step": 7, "epoch": 1}
    engine.save_checkpoint(out, client_state=client_state, tag="checkpoint")
    torch.save({k: v.clone() for k, v in module.network.state_dict().items()}, os.path.join(os.path.dirname(out), "expected.pt"))
    """
)


def test_zero_stage2_checkpoint_directory_exports_to_a_loadable_model(tmp_path):
    env = dict(os.environ, DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29700 + os.getpid() % 200),
               RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    reason = _cannot_run_reason(env)
    if reason:
        pytest.skip(reason)
    checkpoint_dir = tmp_path / "last.ckpt"  # Lightning names the DeepSpeed directory like a file
    written = subprocess.run([sys.executable, "-c", WRITE_ZERO_CHECKPOINT, str(checkpoint_dir)], env=env,
                             capture_output=True, text=True, timeout=900)
    assert written.returncode == 0, written.stderr[-3000:]
    assert checkpoint_dir.is_dir() and (checkpoint_dir / "checkpoint").is_dir()

    import torch

    from alphastomics.checkpoint import load_model
    from alphastomics.cli import main as cli

    model_file = tmp_path / "model.ckpt"
    assert cli(["export", "--checkpoint", str(checkpoint_dir), "--out", str(model_file)]) == 0
    loaded = load_model(model_file)
    network = loaded.network
    assert loaded.genes == ["g0", "g1", "g2", "g3", "g4"] and loaded.config.model.hidden_dim == 16
    expected = torch.load(tmp_path / "expected.pt")
    for name, value in network.state_dict().items():
        assert torch.allclose(value.float(), expected[name].float()), name
    assert torch.load(model_file, weights_only=False)["training"]["global_step"] == 7
