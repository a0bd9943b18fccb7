"""What the benchmarks share: which trained models to run on and the arguments that say so, and the
process-memory readings of the benchmarks that measure peak memory in a fresh process."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results")
    parser.add_argument("--datasets", nargs="+", default=["starmap_mpfc", "bdtnp_drosophila"])
    parser.add_argument("--threads", type=int, default=2)


def trained_models(args: argparse.Namespace) -> Iterator[tuple[str, Path, Path]]:
    """(dataset, its results folder, its model file) for each of ``--datasets`` that has a model
    under ``--results`` (the others are named and skipped); torch gets ``--threads``."""
    import torch

    torch.set_num_threads(args.threads)
    for dataset in args.datasets:
        data_dir = Path(args.results) / dataset
        checkpoint = data_dir / "model" / "model.ckpt"
        if not checkpoint.exists():
            print(f"{dataset}: no model at {checkpoint}, skipped")
            continue
        yield dataset, data_dir, checkpoint


def status_kb(field: str) -> int | None:
    """A field of /proc/self/status in kB (VmRSS, VmHWM), or None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the kernel's high-water mark of this process's memory to its current RSS (clear_refs);
    False where that is not possible, so a peak read later would include earlier use."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    hwm, rss = status_kb("VmHWM"), status_kb("VmRSS")
    return hwm is not None and rss is not None and hwm <= rss + 1024
