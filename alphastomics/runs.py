"""``alphastomics runs``: one table of every method run of a dataset: status (ok, failed with the
reason, not applicable), wall time and peak memory.

Inputs: the status records of peer methods (``alphastomics peer``) and the Snakemake ``benchmark:``
files of the pipeline's jobs, laid out as ``.../benchmarks/<method>/<slice>.<mode>.tsv`` (one per
sampled or peer-run slice and mode) and ``.../benchmarks/<method>/train.tsv`` (AlphaSTomics'
training). A benchmark's wall time (``s``) and peak resident memory (``max_rss``, MB) take
precedence over the status record's own measurements.

Output columns: ``dataset, slice, mode, method, status, reason, wall_s, max_rss_mb, package, settings``
(``package``: a peer's package and version; ``settings``: its settings as JSON; both empty for
AlphaSTomics' own runs and for tables written before they existed).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from alphastomics.io.files import atomic_write_text
from alphastomics.errors import InputError

log = logging.getLogger(__name__)

RUN_COLUMNS = ["dataset", "slice", "mode", "method", "status", "reason", "wall_s", "max_rss_mb"]
PROVENANCE_COLUMNS = ["package", "settings"]
TRAIN_MODE = "train"


def read_benchmark(path: str | Path) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of a Snakemake benchmark file (the first repeat)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: benchmark file not found")
    try:
        table = pd.read_csv(path, sep="\t")
    except Exception as err:  # noqa: BLE001
        raise InputError(f"{path}: not a readable benchmark TSV ({err})") from None
    if "s" not in table.columns or table.empty:
        raise InputError(f"{path}: benchmark file lacks the column 's' (seconds)")
    rss = pd.to_numeric(table.get("max_rss", pd.Series([np.nan])), errors="coerce").iloc[0]
    return float(table["s"].iloc[0]), float(rss)


def runs_table(status_files: list[str | Path], benchmark_files: list[str | Path], dataset: str,
               slice_ids_by_key: dict[str, str] | None = None) -> pd.DataFrame:
    from alphastomics.io.peer_status import STATUS_OK, read_status

    rows: dict[tuple[str, str, str], dict] = {}
    for path in status_files:
        status = read_status(path)
        key = (str(status.get("slice", "")), status["mode"], status["method"])
        rows[key] = {"dataset": dataset, "slice": key[0], "mode": key[1], "method": key[2], "status": status["status"],
                     "reason": status.get("reason", ""), "wall_s": status.get("wall_s", np.nan),
                     "max_rss_mb": status.get("max_rss_mb", np.nan), "package": status.get("package", ""),
                     "settings": json.dumps(status["settings"], sort_keys=True) if status.get("settings") else ""}
    for path in benchmark_files:
        path = Path(path)
        method = path.parent.name
        stem = path.name.removesuffix(".tsv")
        if stem == TRAIN_MODE:
            slice_id, mode = "", TRAIN_MODE
        else:
            if "." not in stem:
                raise InputError(f"{path}: benchmark file name is not <slice>.<mode>.tsv or train.tsv")
            file_key, mode = stem.rsplit(".", 1)
            slice_id = (slice_ids_by_key or {}).get(file_key, file_key)
        wall, rss = read_benchmark(path)
        key = (slice_id, mode, method)
        row = rows.setdefault(key, {"dataset": dataset, "slice": slice_id, "mode": mode, "method": method,
                                    "status": STATUS_OK, "reason": "", "package": "", "settings": ""})
        row["wall_s"], row["max_rss_mb"] = wall, rss
    table = pd.DataFrame(list(rows.values()), columns=RUN_COLUMNS + PROVENANCE_COLUMNS)
    return table.sort_values(["mode", "method", "slice"], kind="stable").reset_index(drop=True)


def read_runs(paths: list[str | Path]) -> pd.DataFrame:
    frames = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: method runs table not found")
        try:
            table = pd.read_csv(path, sep="\t", dtype={c: str for c in RUN_COLUMNS[:6]}, keep_default_na=False)
        except Exception as err:  # noqa: BLE001
            raise InputError(f"{path}: not a readable TSV ({err})") from None
        missing = [c for c in RUN_COLUMNS if c not in table.columns]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
        for c in ("wall_s", "max_rss_mb"):
            table[c] = pd.to_numeric(table[c], errors="coerce")
        for c in PROVENANCE_COLUMNS:
            table[c] = table[c].astype(str) if c in table.columns else ""
        frames.append(table[RUN_COLUMNS + PROVENANCE_COLUMNS])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=RUN_COLUMNS + PROVENANCE_COLUMNS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True)
    p.add_argument("--status", nargs="*", default=[], help="status records of peer methods (alphastomics peer)")
    p.add_argument("--benchmarks", nargs="*", default=[], help="Snakemake benchmark files .../benchmarks/<method>/<slice>.<mode>.tsv")
    p.add_argument("--manifest", default=None, help="dataset manifest: maps the file keys of benchmark names back to slice ids")
    p.add_argument("--out", required=True, help="table to write (TSV)")


def main(args: argparse.Namespace) -> int:
    keys = None
    if args.manifest:
        from alphastomics.io.manifest import load_manifest, slice_ids_by_file_key

        keys = slice_ids_by_file_key(load_manifest(args.manifest))
    benchmarks = []
    for path in args.benchmarks:  # a job's benchmark file is written when it ends; one that never ran has none
        if Path(path).is_file():
            benchmarks.append(path)
        else:
            log.warning("%s: benchmark file not found; that run's time and memory are left blank", path)
    table = runs_table(args.status, benchmarks, args.dataset, keys)
    out = Path(args.out)
    atomic_write_text(out, table.to_csv(sep="\t", index=False, na_rep="NaN", float_format="%.6g"))
    failed = table[table["status"] != "ok"]
    for _, r in failed.iterrows():
        log.warning("%s %s %s: %s (%s)", r["method"], r["mode"], r["slice"], r["status"], r["reason"])
    log.info("%d method runs (%d not ok) -> %s", len(table), len(failed), out)
    return 0
