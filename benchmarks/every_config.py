"""Every benchmark config in one table: each config's datasets run as the README runs them
(`snakemake --configfile <config> -- results/<dataset>/report.html`), then their headline figures
gathered, peers beside, into one page, judged as the every-slice benchmark judges a fold.

    python benchmarks/every_config.py                       # config/config.yaml and every config/benchmarks/*.yaml
    python benchmarks/every_config.py --configs config/benchmarks/st_mouse_olfactory_bulb.yaml
    python benchmarks/every_config.py --gather-only         # the table from the runs already made

Each config runs in its own Snakemake invocation, so a config's own settings (a 3D dataset's
training section, say) apply to its datasets only; a config that fails does not stop the others
(its datasets show as not run). Figures are one held-out slice per dataset (the config's
`test_slices`), not fold means: the figure of record for choosing settings is
`benchmarks/every_slice.py`. Written: `results/every_config/table.tsv` (every dataset, method and
headline metric), `results/every_config/every_config.md` and `docs/results/every_config.md`
(unless `--no-docs`). Prints one line of JSON per dataset, last.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from every_slice import _fmt, add_run_arguments, fold_table, git_commit, has_labels, summarise, verdicts  # noqa: E402

DEFAULT_CONFIGS = [REPO / "config" / "config.yaml", *sorted((REPO / "config" / "benchmarks").glob("*.yaml"))]


def config_runs(configs: list[Path]) -> list[dict]:
    """One record per dataset of every config: the config, the dataset, its held-out slice(s)."""
    runs = []
    for path in configs:
        config = yaml.safe_load(path.read_text())
        for name, spec in (config.get("datasets") or {}).items():
            variant = "labels" if has_labels(spec) else "no labels in the data"
            for held_out in spec["test_slices"]:
                runs.append({"config": str(path.relative_to(REPO)), "fold_dataset": name, "dataset": name,
                             "variant": variant, "slice": held_out})
    return runs


def run_config(path: Path, datasets: list[str], cores: int, extra: list[str]) -> dict:
    targets = [f"results/{d}/report.html" for d in datasets]
    command = ["snakemake", "--configfile", str(path), "--cores", str(cores), "--keep-going", *extra, "--", *targets]
    print("running:", " ".join(command), file=sys.stderr, flush=True)
    started = time.time()
    done = subprocess.run(command, cwd=REPO)
    if done.returncode != 0:
        print(f"every_config: {path} exited with {done.returncode}; its finished datasets are gathered", file=sys.stderr)
    return {"config": str(path.relative_to(REPO)), "returncode": done.returncode, "wall_s": round(time.time() - started)}


def markdown(summary, judged, runs: list[dict], ran: list[dict], args) -> str:
    lines = [
        "# Every benchmark config",
        "",
        f"Written by `python benchmarks/every_config.py{' ' + ' '.join(sys.argv[1:]) if sys.argv[1:] else ''}` on "
        f"{dt.date.today().isoformat()} at commit {git_commit()}. Each dataset is run by its own config, one held-out "
        "slice each (`test_slices`), as the README's commands run it; `joint` is judged against the real training "
        "slices scored like generated ones. One slice is not a fold mean: settings are chosen on "
        "[every_slice.md](every_slice.md), never here.",
        "",
    ]
    if args.note:
        lines += [args.note, ""]
    if ran:
        lines += ["| config | exit | wall time |", "|---|---|---|"]
        lines += [f"| `{r['config']}` | {r['returncode']} | {r['wall_s'] / 60:.0f} min |" for r in ran]
        lines.append("")
    scored = set(summary["dataset"]) if not summary.empty else set()
    missing = [r for r in runs if r["dataset"] not in scored]
    if missing:
        lines += ["Not scored (no `metrics.tsv`): " + ", ".join(f"{r['dataset']} (`{r['config']}`)" for r in missing), ""]
    lines += ["| dataset | held out | mode | metric | AlphaSTomics | peers | real slices (range) | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    held = {r["dataset"]: r["slice"] for r in runs}
    for v in judged:
        rows = summary[(summary["dataset"] == v["dataset"]) & (summary["mode"] == v["mode"]) & (summary["metric"] == v["metric"])]
        peers = rows[rows["role"] == "peer"].sort_values("method")
        peer_text = "; ".join(f"{r.method} {_fmt(r.mean)}" for r in peers.itertuples()) or "–"
        real = rows[rows["method"] == "real slices"]
        real_text = f"{_fmt(real['min'].iloc[0])} – {_fmt(real['max'].iloc[0])}" if not real.empty else "–"
        mark = {True: "**met**", False: "not met", None: "–"}[v["met"]]
        lines.append(f"| {v['dataset']} | {held.get(v['dataset'], '')} | {v['mode']} | {v['metric']} | "
                     f"{_fmt(v['alphastomics'])} | {peer_text} | {real_text} | {mark}: {v['verdict']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", type=Path, default=DEFAULT_CONFIGS)
    add_run_arguments(p, "every_config", "datasets")
    args = p.parse_args()

    configs = [c.resolve() for c in args.configs]
    for path in configs:
        if not path.is_file():
            raise SystemExit(f"every_config: config not found: {path}")
    runs = config_runs(configs)
    ran = []
    if not args.gather_only:
        for path in configs:
            datasets = sorted({r["dataset"] for r in runs if r["config"] == str(path.relative_to(REPO))})
            ran.append(run_config(path, datasets, args.cores, args.snakemake_args))
    if any(a in ("-n", "--dry-run", "--dryrun") for a in args.snakemake_args):
        return 0

    table = fold_table(runs)
    if table.empty:
        print(json.dumps({"error": "no dataset has metrics yet", "datasets": len(runs)}))
        return 1
    out = REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "table.tsv", sep="\t", index=False)
    summary = summarise(table)
    judged = verdicts(summary)
    text = markdown(summary, judged, runs, ran, args)
    (out / "every_config.md").write_text(text)
    if not args.no_docs:
        (REPO / "docs" / "results" / "every_config.md").write_text(text)
    print(text)
    for run in runs:
        mine = [j for j in judged if j["dataset"] == run["dataset"]]
        line = {"dataset": run["dataset"], "config": run["config"], "held_out": run["slice"], "scored": bool(mine),
                "targets_met": sum(1 for j in mine if j["met"]), "targets_judged": sum(1 for j in mine if j["met"] is not None),
                **{f"{j['mode']}.{j['metric']}": round(j["alphastomics"], 4) for j in mine},
                **{f"{j['mode']}.{j['metric']}.best_peer": round(j["best_peer_mean"], 4) for j in mine if "best_peer_mean" in j}}
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
