"""What the benchmarks of trained models share: which models to run on, and the arguments that say so."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import torch


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default="results")
    parser.add_argument("--datasets", nargs="+", default=["starmap_mpfc", "bdtnp_drosophila"])
    parser.add_argument("--threads", type=int, default=2)


def trained_models(args: argparse.Namespace) -> Iterator[tuple[str, Path, Path]]:
    """(dataset, its results folder, its model file) for each of ``--datasets`` that has a model
    under ``--results`` (the others are named and skipped); torch gets ``--threads``."""
    torch.set_num_threads(args.threads)
    for dataset in args.datasets:
        data_dir = Path(args.results) / dataset
        checkpoint = data_dir / "model" / "model.ckpt"
        if not checkpoint.exists():
            print(f"{dataset}: no model at {checkpoint}, skipped")
            continue
        yield dataset, data_dir, checkpoint
