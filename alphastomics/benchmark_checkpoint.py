"""``alphastomics test``: the whole benchmark of one checkpoint without Snakemake.

Every slice of a preprocessed dataset that the checkpoint did not train on is sampled in every mode
(``--modes``, default the checkpoint's ``sampling.modes`` plus ``impute``), each sample file is
evaluated against the training slices as reference, and the report is rendered:

    OUT/samples/<slice>.<mode>.h5ad, OUT/metrics/<slice>.<mode>.tsv (+ .json), OUT/metrics.tsv,
    OUT/report.html

the same files the pipeline writes under results/<dataset>/. A checkpoint conditioned on slice
covariates (model.slice_covariates) also draws each held-out slice that records a value of one in
``pos_to_expr`` under every other value it was trained on (a perturbation,
``samples/<slice>.pos_to_expr.<key>_<value>-<hash>.h5ad`` and its metrics), shown in the report's
Perturbation section and left out of metrics.tsv (it is not a reconstruction of the slice).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd

from alphastomics import MODES
from alphastomics.checkpoint import load_model
from alphastomics.errors import InputError
from alphastomics.evaluate import evaluate_sample, write_metrics
from alphastomics.io.manifest import load_manifest
from alphastomics.io.names import slice_file_key
from alphastomics.guided import GuidanceRequest
from alphastomics.io.sample_file import write_sample as write_h5ad_atomic
from alphastomics.sample import sample_slice

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="model file (model.ckpt)")
    p.add_argument("--data", required=True, help="preprocessed dataset directory (manifest.json + shards), e.g. results/<dataset>")
    p.add_argument("--out", required=True, help="output directory: samples/, metrics/, metrics.tsv, report.html")
    p.add_argument("--modes", nargs="+", choices=MODES, default=None, help="default: the checkpoint's sampling modes and impute")
    p.add_argument("--slices", nargs="+", default=None, help="default: every slice the checkpoint did not train on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default=None, help="config YAML whose evaluation: section is used (default: the checkpoint's)")


def perturbations(model, slice_entry: dict) -> list[tuple[str, str]]:
    """(covariate, value) pairs a held-out slice is drawn under: every value the model was trained
    on other than the slice's own, for each covariate the slice records."""
    own = slice_entry.get("covariates") or {}
    trained_on = model.conditions.covariates if model.conditions is not None else {}
    return [(key, value) for key, values in trained_on.items() if key in own
            for value in values if value != str(own[key])]


def main(args: argparse.Namespace) -> int:
    from alphastomics.config import load_config
    from alphastomics.report.render import render_report, write_atomic

    started = time.time()
    model = load_model(args.checkpoint)
    manifest = load_manifest(args.data)
    held_out = args.slices or [s for s in manifest["slices"] if s not in set(model.train_slices)]
    if not held_out:
        raise InputError(f"{args.data}: every slice was a training slice of {args.checkpoint}: nothing held out to test")
    unknown = [s for s in held_out if s not in manifest["slices"]]
    if unknown:
        raise InputError(f"{args.data}: unknown slice(s) {', '.join(unknown)}; slices: {', '.join(manifest['slices'])}")
    modes = args.modes or list(dict.fromkeys([*model.config.sampling.modes, "impute"]))
    evaluation = load_config(args.config).evaluation if args.config else model.config.evaluation
    out = Path(args.out)
    dataset = manifest.get("dataset", "")
    samples, tables = [], []
    for slice_id in held_out:
        key = slice_file_key(slice_id)
        for mode in modes:
            log.info("sampling %s in %s", slice_id, mode)
            adata = sample_slice(args.checkpoint, args.data, slice_id, mode, seed=args.seed, dataset=dataset)
            path = out / "samples" / f"{key}.{mode}.h5ad"
            write_h5ad_atomic(adata, path)
            samples.append(path)
            table, details = evaluate_sample(adata, evaluation, dataset=dataset, source=str(path), reference_dir=args.data)
            tables.append(write_metrics(table, details, out / "metrics" / f"{key}.{mode}.tsv")[0])
    for slice_id in held_out:
        for key, value in perturbations(model, manifest["slices"][slice_id]):
            log.info("sampling %s in pos_to_expr under %s=%s", slice_id, key, value)
            adata = sample_slice(args.checkpoint, args.data, slice_id, "pos_to_expr", seed=args.seed, dataset=dataset,
                                 guidance=GuidanceRequest(slice_conditions={key: value}))
            name = f"{slice_file_key(slice_id)}.pos_to_expr.{slice_file_key(f'{key}={value}')}"
            path = out / "samples" / f"{name}.h5ad"
            write_h5ad_atomic(adata, path)
            samples.append(path)
            table, details = evaluate_sample(adata, evaluation, dataset=dataset, source=str(path), reference_dir=args.data)
            write_metrics(table, details, out / "metrics" / f"{name}.tsv")
    gathered = pd.concat([pd.read_csv(t, sep="\t") for t in tables], ignore_index=True)
    gathered_path = out / "metrics.tsv"
    write_atomic(gathered.to_csv(sep="\t", index=False, na_rep="NaN", float_format="%.10g"), gathered_path)
    html = render_report(manifest=Path(args.data) / "manifest.json", metrics=[gathered_path], samples=samples, dataset=dataset,
                         checkpoint=args.checkpoint)
    write_atomic(html, out / "report.html")
    log.info("tested %d slice(s) x %d mode(s) in %.0f s -> %s", len(held_out), len(modes), time.time() - started, out / "report.html")
    return 0
