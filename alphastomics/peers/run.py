"""``alphastomics peer``: run one peer method on one held-out slice in one mode -> a sample file
(same format as ``alphastomics sample``) and, always, a status record (JSON).

The method runs in a child process under a time limit. Whatever stops it (the package is not
installed, the time limit, the child killed for memory, an error) is written to the status record
as ``failed`` with the reason, and the command still exits 0 (unless ``--strict``), so that the
pipeline completes and the report shows the failure beside the other methods. A method that does
not apply (kNN in coordinates without a shared frame) is ``not applicable``.

Status record: ``{"dataset", "slice", "mode", "method", "status": "ok" | "failed" | "not applicable",
"reason", "sample" (path, when ok), "wall_s", "max_rss_mb", "time_limit_s"}``, and for a method run
through another package, ``"package"`` (name and version), ``"settings"`` and ``"method_run"`` (what
its solver did). An ``ok`` run whose solver stopped at its iteration limit says so in ``reason``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import resource
import time
import traceback
from pathlib import Path

from alphastomics import EVALUATION_MODES
from alphastomics.errors import InputError
from alphastomics.io.peer_status import STATUS_FAILED, STATUS_NOT_APPLICABLE, STATUS_OK, write_status
from alphastomics.io.sample_file import plain
from alphastomics.peers import PEER_MODES, PEER_PACKAGES

log = logging.getLogger(__name__)


def _child(args: dict, error_path: str) -> None:
    """Runs in the child process: the method, then the sample file (atomically)."""
    try:
        if args.get("threads"):
            from alphastomics.cli import limit_threads

            limit_threads(args["threads"])
        from alphastomics.io.sample_file import INFO, write_sample
        from alphastomics.peers.common import NotApplicable, load_inputs
        from alphastomics.peers.methods import run_method

        try:
            inputs = load_inputs(args["data"], args["slice_id"], args["train_slices"], args["frame"], args["mode"],
                                 args["holdout_fraction"], args["holdout_seed"], args["exclude_slices"])
            adata = run_method(args["method"], args["mode"], inputs, args["seed"], args["checkpoint"], args["options"])
        except NotApplicable as err:
            Path(error_path).write_text(json.dumps({"status": STATUS_NOT_APPLICABLE, "reason": str(err)}))
            os._exit(0)
        adata.uns[INFO]["dataset"] = args["dataset"] or adata.uns[INFO].get("dataset", "")
        write_sample(adata, args["out"])
        # what the method's package did (version, settings, whether its solver converged) goes into the status record
        run = adata.uns[INFO].get("method_run")
        Path(error_path).write_text(json.dumps({"status": STATUS_OK, "reason": "", "method_run": plain(run)}))
    except ImportError as err:
        package = PEER_PACKAGES.get(args["method"], err.name or "?")
        reason = f"not installed: {package} ({err}); install the peers extra: pip install -e '.[peers]'"
        Path(error_path).write_text(json.dumps({"status": STATUS_FAILED, "reason": reason}))
        os._exit(3)
    except MemoryError:
        Path(error_path).write_text(json.dumps({"status": STATUS_FAILED, "reason": "out of memory (MemoryError)"}))
        os._exit(4)
    except BaseException as err:  # noqa: BLE001 - every failure becomes a status record
        reason = f"{type(err).__name__}: {err}"
        Path(error_path).write_text(json.dumps({"status": STATUS_FAILED, "reason": reason[:2000],
                                                "traceback": traceback.format_exc()[-4000:]}))
        os._exit(2)
    os._exit(0)


def run_note(run: dict | None) -> str:
    """Plain words on how a peer's own solver ended, where it says (empty when it reached its tolerance)."""
    if run and run.get("converged") is False:
        return (f"the solver stopped at its iteration limit ({run.get('outer_iterations')}) before its tolerance "
                f"({run.get('settings', {}).get('tol')}); last change {run.get('final_change', float('nan')):.3g}")
    return ""


def run_peer(method: str, mode: str, data: str, slice_id: str, out: str | Path, status_path: str | Path, *,
             train_slices: list[str] | None = None, frame: str = "per_slice", time_limit_s: float = 600.0,
             holdout_fraction: float = 0.1, holdout_seed: int = 0, seed: int = 0, checkpoint: str | None = None,
             dataset: str | None = None, options: dict | None = None, threads: int | None = None,
             exclude_slices: list[str] | None = None) -> dict:
    """Run the method in a child process; write and return the status record."""
    if method not in PEER_MODES:
        raise InputError(f"unknown method {method!r} (one of {', '.join(PEER_MODES)})")
    if mode not in PEER_MODES[method]:
        raise InputError(f"method {method!r} runs in mode(s) {', '.join(PEER_MODES[method])}, not {mode!r}")
    out, status_path = Path(out), Path(status_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # a stale sample of an earlier run must not pass for this one's
    error_path = status_path.with_name(f".{status_path.name}.{os.getpid()}.error")
    error_path.unlink(missing_ok=True)
    args = {"method": method, "mode": mode, "data": str(data), "slice_id": slice_id, "out": str(out),
            "train_slices": train_slices, "frame": frame, "holdout_fraction": holdout_fraction,
            "holdout_seed": holdout_seed, "seed": seed, "checkpoint": checkpoint, "dataset": dataset,
            "options": options or {}, "threads": threads,
            "exclude_slices": exclude_slices}
    started = time.time()
    child = multiprocessing.get_context("fork").Process(target=_child, args=(args, str(error_path)), daemon=False)
    child.start()
    child.join(time_limit_s)
    timed_out = child.is_alive()
    if timed_out:
        child.terminate()
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
    wall = time.time() - started
    max_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    record = {"dataset": dataset or "", "slice": slice_id, "mode": mode, "method": method,
              "wall_s": round(wall, 2), "max_rss_mb": round(max_rss_mb, 1), "time_limit_s": time_limit_s}
    detail = {}
    if error_path.is_file():
        try:
            detail = json.loads(error_path.read_text())
        except json.JSONDecodeError:
            detail = {}
        error_path.unlink(missing_ok=True)
    if timed_out:
        record.update(status=STATUS_FAILED, reason=f"too slow: stopped at the time limit of {time_limit_s:g} s")
    elif detail and detail["status"] == STATUS_OK and out.is_file():
        run = detail.get("method_run") or {}
        record.update(status=STATUS_OK, reason=run_note(run), sample=str(out))
        if run:
            record["package"] = f"{run.get('package', '')} {run.get('package_version', '')}".strip()
            record["settings"] = run.get("settings", {})
            record["method_run"] = run
    elif detail and detail["status"] != STATUS_OK:
        record.update(status=detail["status"], reason=detail["reason"])
        if "traceback" in detail:
            record["traceback"] = detail["traceback"]
    elif child.exitcode and child.exitcode < 0:
        signal_number = -child.exitcode
        why = "out of memory (killed with SIGKILL)" if signal_number == 9 else f"killed by signal {signal_number}"
        record.update(status=STATUS_FAILED, reason=why)
    elif child.exitcode != 0 or not out.is_file():
        record.update(status=STATUS_FAILED, reason=f"exited with code {child.exitcode} and no sample file")
    else:
        record.update(status=STATUS_OK, reason="", sample=str(out))
    if record["status"] != STATUS_OK:
        out.unlink(missing_ok=True)
    write_status(status_path, record)
    return record


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, choices=sorted(PEER_MODES))
    p.add_argument("--mode", required=True, choices=EVALUATION_MODES)
    p.add_argument("--data", required=True, help="preprocessed dataset directory (manifest.json + shards)")
    p.add_argument("--slice", required=True, dest="slice_id", help="the held-out slice")
    p.add_argument("--train-slices", nargs="*", default=None, help="training slices (default: every other slice but --exclude-slices)")
    p.add_argument("--exclude-slices", nargs="*", default=None, help="slices never used for training (other test and validation slices)")
    p.add_argument("--coordinate-frame", choices=("per_slice", "shared"), default="per_slice")
    p.add_argument("--out", required=True, help="sample file to write (.h5ad, docs/FORMATS.md)")
    p.add_argument("--status", required=True, help="status record to write (JSON), whatever happens")
    p.add_argument("--time-limit", type=float, default=600.0, help="seconds before the method is stopped (default 600)")
    p.add_argument("--holdout-genes", type=float, default=0.1, dest="holdout_fraction",
                   help="impute: fraction of measured genes held out (as sampling.holdout_fraction)")
    p.add_argument("--holdout-seed", type=int, default=0, help="impute: seed of the held-out gene choice (as sampling.holdout_seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", default=None, help="model file (domains with --method alphastomics)")
    p.add_argument("--dataset", default=None, help="dataset name recorded in the outputs")
    p.add_argument("--options", default=None, metavar="JSON", help="keyword options of the method, as a JSON object")
    p.add_argument("--strict", action="store_true", help="exit 1 when the method fails (default: record it and exit 0)")


def main(args: argparse.Namespace) -> int:
    try:
        options = json.loads(args.options) if args.options else {}
    except json.JSONDecodeError as err:
        raise InputError(f"--options: not a JSON object ({err})") from None
    threads = int(os.environ.get("OMP_NUM_THREADS", "0")) or None
    record = run_peer(args.method, args.mode, args.data, args.slice_id, args.out, args.status,
                      train_slices=args.train_slices, frame=args.coordinate_frame, time_limit_s=args.time_limit,
                      holdout_fraction=args.holdout_fraction, holdout_seed=args.holdout_seed, seed=args.seed,
                      checkpoint=args.checkpoint, dataset=args.dataset, options=options, threads=threads,
                      exclude_slices=args.exclude_slices)
    message = f"{args.method} {args.mode} {args.slice_id}: {record['status']}"
    message += f" ({record['reason']})" if record.get("reason") else ""
    message += f" in {record['wall_s']} s, peak {record['max_rss_mb']} MB"
    if record["status"] == STATUS_FAILED:
        log.error(message)
        if record.get("traceback"):
            log.error(record["traceback"])
        return 1 if args.strict else 0
    log.info(message)
    return 0
