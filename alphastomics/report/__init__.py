"""``alphastomics report``: the self-contained HTML benchmark report of a dataset, and
``alphastomics report --summary``: one headline table across datasets, linking their reports.

Heavy imports (matplotlib, anndata, jinja2) happen inside ``main`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from alphastomics.errors import InputError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", help="dataset name (default: the manifest's 'dataset')")
    parser.add_argument("--manifest", help="results/<dataset>/manifest.json (required unless --summary)")
    parser.add_argument("--metrics", nargs="+", default=[], metavar="TSV",
                        help="tidy metric table(s): results/<dataset>/metrics.tsv (with --summary: one per dataset)")
    parser.add_argument("--samples", nargs="*", default=[], metavar="H5AD",
                        help="sample files results/<dataset>/samples/<slice>.<mode>[.<tag>].h5ad")
    parser.add_argument("--training-log", help="Lightning CSVLogger metrics.csv, or a folder searched for it (optional)")
    parser.add_argument("--config", help="configuration YAML shown under provenance (optional)")
    parser.add_argument("--checkpoint", help="model checkpoint; its sha256 is shown under provenance (optional)")
    parser.add_argument("--log-dir", help="folder of the pipeline's logs; run times are read from them (optional)")
    parser.add_argument("--runs", nargs="*", default=[], metavar="TSV",
                        help="method runs table(s) results/<dataset>/methods.tsv (alphastomics runs): status, wall time, "
                             "peak memory of every method (optional)")
    parser.add_argument("--peer-status", nargs="*", default=[], metavar="JSON",
                        help="status records of the peer runs (results/<dataset>/peers/<method>/<slice>.<mode>.status.json); "
                             "the expr_to_pos layouts of those that ran are drawn beside AlphaSTomics' (optional)")
    parser.add_argument("--targets", default=None, metavar="TXT",
                        help="with --summary: also write the benchmark targets, met or not, as text (and print them)")
    parser.add_argument("--summary", action="store_true",
                        help="write the cross-dataset summary page from --metrics instead of a dataset report")
    parser.add_argument("--reports", nargs="*", default=[], metavar="HTML",
                        help="with --summary: dataset reports to link, results/<dataset>/report.html (default: report.html "
                             "beside each metric table, when present)")
    parser.add_argument("--out", required=True, help="output HTML file (written atomically)")


def _write_summary(args: argparse.Namespace) -> int:
    from alphastomics.report.render import render_summary, write_atomic

    reports = {}
    for report in args.reports:
        if not Path(report).is_file():
            raise InputError(f"{report}: dataset report not found")
        reports[Path(report).parent.name] = report  # results/<dataset>/report.html
    html, targets = render_summary(args.metrics, reports=reports or None, out=args.out, runs=args.runs)
    write_atomic(html, args.out)
    print(targets, end="")
    if args.targets:
        write_atomic(targets, args.targets)
    log.info("wrote %s", args.out)
    return 0


def main(args: argparse.Namespace) -> int:
    if args.summary:
        return _write_summary(args)
    if not args.manifest:
        raise InputError("--manifest is required for a dataset report (or pass --summary)")
    if not args.metrics:
        raise InputError("--metrics is required: the dataset's metrics.tsv")
    from alphastomics.report.render import render_report, write_atomic

    html = render_report(
        manifest=args.manifest,
        metrics=args.metrics,
        samples=args.samples,
        dataset=args.dataset,
        training_log=args.training_log,
        config=args.config,
        checkpoint=args.checkpoint,
        log_dir=args.log_dir,
        runs=args.runs,
        peer_status=args.peer_status,
    )
    write_atomic(html, args.out)
    log.info("wrote %s (%.1f MB)", args.out, Path(args.out).stat().st_size / 1e6)
    return 0
