"""Command-line entry point: ``alphastomics <command> ...``.

Each command lives in its own module exposing ``add_arguments(parser)`` and ``main(args) -> int``;
modules are imported only when their command runs, so ``alphastomics --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from alphastomics import __version__
from alphastomics.errors import AlphaSTomicsError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "preprocess": ("alphastomics.preprocess", "h5ad files of one platform -> Parquet shards + manifest.json"),
    "gene-list": ("alphastomics.gene_selection", "write the fixed gene list (a file, intersection or union of panels, or "
                                                "the panels' highly variable genes on the training slices)"),
    "manifest": ("alphastomics.io.manifest", "merge per-file manifests into one dataset manifest.json"),
    "train": ("alphastomics.train", "train the diffusion model on the shards of a dataset"),
    "sample": ("alphastomics.sample", "sample one slice in a mode -> h5ad with true and generated values"),
    "evaluate": ("alphastomics.evaluate", "score one sample file -> tidy metric table"),
    "denoise": ("alphastomics.denoise", "denoised expression of measured cells (zeros regenerated from the tissue context)"),
    "extract": ("alphastomics.extract", "per-cell embeddings of any h5ad -> obsm['X_alphastomics'] (for scanpy neighbors/leiden)"),
    "test": ("alphastomics.benchmark_checkpoint", "the whole benchmark of one checkpoint without Snakemake: sample every held-out slice "
                                       "in every mode, evaluate, report"),
    "peer": ("alphastomics.peers.run", "run one peer method (novosparc, tangram, celery, knn, graphst, ...) on a held-out slice -> "
                                       "sample file + status record"),
    "runs": ("alphastomics.runs", "table of every method run of a dataset: status, wall time, peak memory (status records + "
                                  "Snakemake benchmark files)"),
    "gather": ("alphastomics.evaluate", "concatenate per-sample metric tables into one dataset table"),
    "report": ("alphastomics.report", "render the self-contained HTML benchmark report of a dataset"),
    "export": ("alphastomics.checkpoint", "convert a training checkpoint (Lightning file or DeepSpeed directory) to the model file sampling loads"),
    "params": ("alphastomics.params", "print total and active parameter counts of model variants"),
}

# Commands that run the network on whole sections without training: large tensors are allocated
# and freed at every step (alphastomics.allocator).
NETWORK_INFERENCE_COMMANDS = {"sample", "denoise", "extract", "test"}

# Modules that host several commands expose add_<command>_arguments / <command>_main.
_SHARED_MODULE_ENTRY = {"gather": "gather"}


def _entry_points(command: str):
    module = importlib.import_module(COMMANDS[command][0])
    prefix = _SHARED_MODULE_ENTRY.get(command)
    if prefix:
        return getattr(module, f"add_{prefix}_arguments"), getattr(module, f"{prefix}_main")
    return module.add_arguments, module.main


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alphastomics",
        description="Generative modelling of spatial transcriptomics: expression and coordinates of every cell of a slice.",
    )
    parser.add_argument("--version", action="version", version=f"alphastomics {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads for torch and numerical libraries (default: their own, usually all cores); "
                             "the pipeline passes each rule's threads")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    requested = next((a for a in argv if a in COMMANDS), None)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == requested:  # only import the module of the command actually used
            add_arguments, _ = _entry_points(name)
            add_arguments(p)
    return parser


def limit_threads(threads: int) -> None:
    """Cap the threads of torch, OpenMP and BLAS, so jobs that share a machine share its cores.

    Environment variables cover libraries loaded later and child processes; threadpoolctl and
    torch.set_num_threads cap those already loaded (the command's module was imported to build
    its arguments).
    """
    threads = max(1, int(threads))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[name] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    if args.threads is not None:
        limit_threads(args.threads)
    if args.command in NETWORK_INFERENCE_COMMANDS:
        from alphastomics.allocator import reuse_freed_memory

        reuse_freed_memory()
    _, run = _entry_points(args.command)
    try:
        return int(run(args) or 0)
    except AlphaSTomicsError as err:
        print(f"alphastomics {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
