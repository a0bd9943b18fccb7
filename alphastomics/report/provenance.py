"""Provenance of a report: versions, git commit, configuration, checkpoint and sample hashes, run times from the logs."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import subprocess
from pathlib import Path

import numpy as np

from alphastomics import __version__


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def git_commit(cwd: str | Path | None = None) -> str:
    for where in ([cwd] if cwd else []) + [os.getcwd(), Path(__file__).resolve().parent]:
        try:
            head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
            if head.returncode != 0:
                continue
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                   capture_output=True, text=True, timeout=10)
            return head.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            continue
    return "unknown (not run from a git checkout)"


_TS = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})")


def log_runtimes(log_dir: str | Path | None, dataset: str) -> list[dict]:
    """Start, end and duration of each log file, from the first and last timestamp it holds."""
    if not log_dir or not Path(log_dir).is_dir():
        return []
    files = [p for p in sorted(Path(log_dir).rglob("*")) if p.is_file() and p.suffix in (".log", ".txt", ".err", ".out", "")]
    mine = [p for p in files if dataset and dataset in str(p.relative_to(log_dir))]
    rows = []
    for p in (mine or files)[:200]:
        try:
            text = p.read_text(errors="replace")
        except OSError:
            continue
        stamps = _TS.findall(text)
        start = end = duration = ""
        if stamps:
            try:
                t0 = _dt.datetime.fromisoformat(" ".join(stamps[0]))
                t1 = _dt.datetime.fromisoformat(" ".join(stamps[-1]))
                start, end = t0.isoformat(sep=" "), t1.isoformat(sep=" ")
                duration = _fmt_seconds((t1 - t0).total_seconds())
            except ValueError:
                pass
        rows.append({"file": str(p.relative_to(log_dir)), "start": start, "end": end, "duration": duration,
                     "size": f"{p.stat().st_size:,} B"})
    return rows


def _fmt_seconds(s: float | None) -> str:
    if s is None or not np.isfinite(s):
        return ""
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {s % 60:.0f} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def provenance_section(samples, config, checkpoint, log_dir, dataset, manifest) -> dict:
    config_text, config_note = "", ""
    if config:
        if Path(config).is_file():
            config_text = Path(config).read_text(errors="replace")
        else:
            config_note = f"Configuration file not found: {config}"
    ckpt_hash, ckpt_note = "", ""
    if checkpoint:
        if Path(checkpoint).is_file():
            ckpt_hash = sha256_file(checkpoint)
        else:
            ckpt_note = f"Checkpoint not found: {checkpoint}"
    sample_hashes = sorted({str(s.meta["checkpoint_sha256"]) for s in samples if s.meta.get("checkpoint_sha256")})
    mismatch = [h for h in sample_hashes if ckpt_hash and h != ckpt_hash]
    sample_rows = [
        {
            "file": s.path.name, "slice": s.slice_id, "mode": s.mode, "method": s.method,
            "seed": "" if s.seed is None else s.seed, "steps": s.meta.get("steps", ""),
            "n_cells": int(s.true_pos.shape[0]), "n_dims": int(s.true_pos.shape[1]),
            "runtime": _fmt_seconds(s.meta.get("runtime_s")) if isinstance(s.meta.get("runtime_s"), (int, float)) else "",
            "version": s.meta.get("package_version", ""),
        }
        for s in samples
    ]
    return {
        "report_version": __version__,
        "manifest_version": manifest.get("package_version", ""),
        "sample_versions": sorted({str(s.meta["package_version"]) for s in samples if s.meta.get("package_version")}),
        "git_commit": git_commit(),
        "config_path": str(config or ""),
        "config_text": config_text,
        "config_note": config_note,
        "checkpoint": str(checkpoint or ""),
        "checkpoint_sha256": ckpt_hash,
        "checkpoint_note": ckpt_note,
        "sample_hashes": sample_hashes,
        "hash_mismatch": mismatch,
        "samples": sample_rows,
        "logs": log_runtimes(log_dir, dataset),
        "log_dir": str(log_dir or ""),
        "generated_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
