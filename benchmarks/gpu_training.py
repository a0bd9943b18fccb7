#!/usr/bin/env python
"""GPU benchmark: the production ``alphastomics train`` on a dataset's real shards, in the precisions
and strategies a cluster run uses, side by side in one run; then the DeepSpeed checkpoint exported
and sampled on the GPU.

Variants (each a fresh ``alphastomics train`` process, ``--max-steps`` steps):

* ``demo_fp32``            -- the demo size (the dataset's ``results/<dataset>/settings/train.yaml``), fp32;
* ``full_fp32``            -- the full size (those settings with ``config/full.yaml`` laid over), fp32
                              (``config/full.yaml``'s precision): the baseline;
* ``full_bf16``            -- full size, ``bf16-mixed``;
* ``full_deepspeed2_bf16`` -- full size, ``bf16-mixed`` under DeepSpeed ZeRO stage 2;
* ``full_cpu_fp32``        -- full size on the CPU (``--cpu-steps`` steps), the no-GPU reference.

Per variant: steady steps per second (from the TensorBoard wall times of ``train/loss_step``, first
20 % of the steps left out: start-up and compilation), whole wall time, peak GPU memory (polled with
``nvidia-smi``), and the mean training loss over the last 50 steps (finite or not). The DeepSpeed
checkpoint directory then goes through ``alphastomics export`` (ZeRO shards -> fp32 model file) and
``alphastomics sample --device cuda`` on the first test slice; with ``--parity-checkpoint`` an
existing model file is sampled on ``cuda`` and on ``cpu`` from the same seed, and the median
difference of the generated coordinates is printed in units of the true RMS radius.

``--long-steps K`` then trains the full size at ``config/full.yaml``'s precision for K steps (its own
cosine schedule; with ``--long-seconds S``, at most what fits in S seconds at the measured rate) and
samples every mode of the test slice into ``--out`` with the full sampling settings, for
``alphastomics evaluate`` wherever the files land.

The last line is one JSON object: ``steps_per_s``, ``peak_gpu_mib``, ``final_loss``,
``speedup_bf16_over_fp32``, ``hours_for_full_yaml`` (config/full.yaml's max_steps at the
measured rate of its own precision), ``deepspeed_export_ok``, ``gpu_sample_s``, ``cuda_cpu_position_difference``.

    python benchmarks/gpu_training.py --data results/starmap_mpfc --steps 300 --out gpu_out
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("model", "diffusion", "loss", "masking", "training")


def overlay(base: dict, extra: dict) -> dict:
    """``extra`` laid over ``base`` key by key, as Snakemake merges --configfile files."""
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = overlay(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def dataset_entry(config_file: Path, data_dir: Path) -> dict:
    datasets = yaml.safe_load(config_file.read_text()).get("datasets", {})
    if data_dir.name not in datasets:
        raise SystemExit(f"{config_file}: no dataset '{data_dir.name}' (the name of --data's folder)")
    return datasets[data_dir.name]


class GpuMemoryPoll:
    """Highest ``memory.used`` nvidia-smi reports while the block runs (MiB; None without nvidia-smi)."""

    def __enter__(self):
        self.peak, self._stop = None, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout.split()
                used = max(int(v) for v in out) if out else None
            except (OSError, ValueError, subprocess.TimeoutExpired):
                return
            if used is not None:
                self.peak = used if self.peak is None else max(self.peak, used)
            self._stop.wait(0.25)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def cli(args: list[str], log: Path, threads: int) -> tuple[int, float]:
    started = time.time()
    with log.open("w") as handle:
        rc = subprocess.run([sys.executable, "-m", "alphastomics.cli", "--threads", str(threads), *args],
                            stdout=handle, stderr=subprocess.STDOUT, cwd=REPO).returncode
    return rc, time.time() - started


def step_times(run_dir: Path) -> tuple[float | None, float | None]:
    """(steady steps per second, mean loss over the last 50 steps) from the run's TensorBoard file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run_dir / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    if not files:
        return None, None
    accumulator = EventAccumulator(str(files[-1]), size_guidance={"scalars": 0})
    accumulator.Reload()
    events = accumulator.Scalars("train/loss_step")
    if len(events) < 10:
        return None, None
    first = len(events) // 5
    span = events[-1].wall_time - events[first].wall_time
    rate = (events[-1].step - events[first].step) / span if span > 0 else None
    tail = [e.value for e in events[-50:]]
    return rate, sum(tail) / len(tail)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="results/starmap_mpfc", help="a dataset folder the pipeline wrote (manifest.json, shards/, settings/)")
    p.add_argument("--config", default="config/config.yaml", help="the config naming the dataset's test slices and frame")
    p.add_argument("--full", default="config/full.yaml", help="laid over the demo settings for the full-size variants")
    p.add_argument("--steps", type=int, default=300, help="training steps per GPU variant")
    p.add_argument("--cpu-steps", type=int, default=30, help="training steps of the CPU reference (0: skip it)")
    p.add_argument("--variants", nargs="+", default=["demo_fp32", "full_fp32", "full_bf16", "full_deepspeed2_bf16", "full_cpu_fp32"])
    p.add_argument("--accelerator", default="gpu", help="for the non-CPU variants (cpu: try the script without a GPU)")
    p.add_argument("--device", default="cuda", help="torch device for the sampling checks")
    p.add_argument("--parity-checkpoint", default=None, help="a model file to sample on --device and on cpu from the same seed")
    p.add_argument("--long-steps", type=int, default=0, help="then train the full size for this many steps and sample every mode")
    p.add_argument("--long-seconds", type=float, default=0,
                   help="cap --long-steps at what fits in this many seconds at the measured rate (0: no cap)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default="gpu_training_out", help="logs, the long run's sample files and the JSON")
    args = p.parse_args()

    data_dir, out = Path(args.data).resolve(), Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    entry = dataset_entry(REPO / args.config, data_dir)
    test = entry.get("test_slices", [])
    frame = entry.get("coordinate_frame", "per_slice")
    demo = yaml.safe_load((data_dir / "settings" / "train.yaml").read_text())
    full_yaml = yaml.safe_load((REPO / args.full).read_text())
    full = overlay(demo, {k: v for k, v in full_yaml.items() if k in SECTIONS})
    work = Path(tempfile.mkdtemp(prefix="gpu_training_"))
    settings = {}
    for name, body in (("demo", demo), ("full", full)):
        settings[name] = work / f"{name}.yaml"
        settings[name].write_text(yaml.safe_dump({k: body[k] for k in SECTIONS if k in body}))

    variants = {
        "demo_fp32": ("demo", "32-true", "auto", args.accelerator, args.steps),
        "full_fp32": ("full", "32-true", "auto", args.accelerator, args.steps),
        "full_bf16": ("full", "bf16-mixed", "auto", args.accelerator, args.steps),
        "full_deepspeed2_bf16": ("full", "bf16-mixed", "deepspeed_stage_2", args.accelerator, args.steps),
        "full_cpu_fp32": ("full", "32-true", "auto", "cpu", args.cpu_steps),
    }
    result = {"steps_per_s": {}, "wall_s": {}, "peak_gpu_mib": {}, "final_loss": {}, "returncode": {}}

    def save():  # after every stage, so a run stopped at its time limit still leaves its figures
        (out / "gpu_training.json").write_text(json.dumps(result, indent=2))

    def train(name: str, size: str, precision: str, strategy: str, accelerator: str, steps: int) -> Path:
        run_dir = work / name
        train_args = ["train", "--data", str(data_dir), "--config", str(settings[size]), "--test-slices", *test,
                      "--val-slices", "--coordinate-frame", frame, "--out", str(run_dir), "--no-export",
                      "--max-steps", str(steps), "--precision", precision, "--strategy", strategy,
                      "--accelerator", accelerator, "--devices", "1"]
        with GpuMemoryPoll() as memory:
            rc, wall = cli(train_args, out / f"train_{name}.log", args.threads)
        rate, loss = step_times(run_dir) if rc == 0 else (None, None)
        result["returncode"][name], result["wall_s"][name] = rc, round(wall, 1)
        result["steps_per_s"][name] = round(rate, 2) if rate else None
        result["peak_gpu_mib"][name] = memory.peak
        result["final_loss"][name] = round(loss, 4) if loss is not None and math.isfinite(loss) else loss
        save()
        print(f"{name:>22}: rc {rc}, {wall:6.1f} s, {result['steps_per_s'][name]} steps/s, "
              f"peak GPU {memory.peak} MiB, loss(last 50) {result['final_loss'][name]}", flush=True)
        return run_dir

    for name in args.variants:
        if name not in variants:
            raise SystemExit(f"unknown variant {name!r} (known: {', '.join(variants)})")
        if variants[name][4] > 0:
            train(name, *variants[name])

    rates = result["steps_per_s"]
    if rates.get("full_bf16") and rates.get("full_fp32"):
        result["speedup_bf16_over_fp32"] = round(rates["full_bf16"] / rates["full_fp32"], 2)
    own = "full_bf16" if str(full["training"].get("precision", "")).startswith("bf16") else "full_fp32"
    if rates.get(own):
        result["hours_for_full_yaml"] = round(full["training"]["max_steps"] / rates[own] / 3600, 2)
    if rates.get("full_bf16") and rates.get("full_cpu_fp32"):
        result["speedup_gpu_bf16_over_cpu"] = round(rates["full_bf16"] / rates["full_cpu_fp32"], 1)

    sample_common = ["--data", str(data_dir), "--slice", test[0], "--mode", "expr_to_pos", "--steps", "50",
                     "--num-samples", "4", "--posterior-mean-draws", "8", "--seed", "0"]
    if result["returncode"].get("full_deepspeed2_bf16") == 0:
        model = work / "deepspeed_model.ckpt"
        training = json.loads((work / "full_deepspeed2_bf16" / "training.json").read_text())
        rc, _ = cli(["export", "--checkpoint", str(work / "full_deepspeed2_bf16" / "training.json"), "--data", str(data_dir),
                     "--out", str(model)], out / "export_deepspeed.log", args.threads)
        result["deepspeed_export_ok"] = rc == 0 and model.is_file()
        result["deepspeed_checkpoint"] = training["last_checkpoint"]
        if result["deepspeed_export_ok"]:
            rc, wall = cli(["sample", "--checkpoint", str(model), *sample_common, "--device", args.device,
                            "--out", str(work / "deepspeed_sample.h5ad")], out / "sample_deepspeed.log", args.threads)
            result["gpu_sample_s"] = round(wall, 1) if rc == 0 else None
        print(f"DeepSpeed export ok: {result['deepspeed_export_ok']}; sample on {args.device}: {result.get('gpu_sample_s')} s", flush=True)

    if args.parity_checkpoint:
        import anndata as ad
        import numpy as np

        positions = {}
        for device in (args.device, "cpu"):
            path = work / f"parity_{device}.h5ad"
            rc, wall = cli(["sample", "--checkpoint", str(Path(args.parity_checkpoint).resolve()), *sample_common,
                            "--device", device, "--out", str(path)], out / f"sample_parity_{device}.log", args.threads)
            result.setdefault("parity_sample_s", {})[device] = round(wall, 1) if rc == 0 else None
            if rc == 0:
                sample = ad.read_h5ad(path)
                positions[device] = (np.asarray(sample.obsm["spatial_pred"], float), np.asarray(sample.obsm["spatial"], float))
        if len(positions) == 2:
            (on_device, truth), (on_cpu, _) = positions[args.device], positions["cpu"]
            radius = np.sqrt(((truth - truth.mean(0)) ** 2).sum(1).mean())
            difference = float(np.median(np.linalg.norm(on_device - on_cpu, axis=1)) / radius)
            result["cuda_cpu_position_difference"] = float(f"{difference:.3g}")
            print(f"median |{args.device} - cpu| of generated positions: {result['cuda_cpu_position_difference']} x RMS radius", flush=True)

    long_steps = args.long_steps
    if args.long_seconds > 0 and long_steps > 0:
        long_steps = min(long_steps, int(args.long_seconds * (rates.get(own) or 0)) // 100 * 100)
        result["long_steps"] = long_steps
    if long_steps > 0:
        run_dir = train("long_full", "full", full["training"].get("precision", "32-true"), "auto", args.accelerator, long_steps)
        model = work / "long_model.ckpt"
        rc, _ = cli(["export", "--checkpoint", str(run_dir / "training.json"), "--data", str(data_dir), "--out", str(model)],
                    out / "export_long.log", args.threads)
        sampling = full_yaml.get("sampling", {})
        for mode in ("expr_to_pos", "pos_to_expr", "joint") if rc == 0 else ():
            draws = sampling.get("joint_num_samples", 4) if mode == "joint" else sampling.get("num_samples", 32)
            rc, wall = cli(["sample", "--checkpoint", str(model), "--data", str(data_dir), "--slice", test[0], "--mode", mode,
                            "--steps", str(sampling.get("steps", 0)), "--sampler", sampling.get("sampler", "ancestral"),
                            "--expression-temperature", str(sampling.get("expression_temperature", 1.0)),
                            "--num-samples", str(draws), "--posterior-mean-draws", str(sampling.get("posterior_mean_draws", 32)),
                            "--seed", "0", "--device", args.device, "--out", str(out / f"{test[0]}.{mode}.h5ad")],
                           out / f"sample_long_{mode}.log", args.threads)
            result.setdefault("long_sample_s", {})[mode] = round(wall, 1) if rc == 0 else None
            print(f"long run, {mode}: rc {rc}, {wall:.1f} s", flush=True)

    save()
    print(json.dumps(result))
    return 0 if all(rc == 0 for rc in result["returncode"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
