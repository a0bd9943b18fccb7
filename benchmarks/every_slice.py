"""Every slice held out in turn: the benchmark's figure of record.

For each dataset, every slice becomes the held-out slice of one fold; each fold is a whole run of
the pipeline (train on the other slices, sample every mode, peers beside, evaluate), so a fold is
exactly what `snakemake` does for one held-out slice. Labelled datasets are also run without
their cell-type labels (`--labels both`, the default), since users' data often have none.

    python benchmarks/every_slice.py                          # the bundled datasets, seqFISH, osmFISH
    python benchmarks/every_slice.py --datasets starmap_mpfc  # one dataset
    python benchmarks/every_slice.py --overlay config/full.yaml --cores 16   # a GPU machine
    python benchmarks/every_slice.py --gather-only            # tables from the folds already run

The folds run as datasets `<dataset>-fold<i>[-nolabels]` of one generated config
(`results/every_slice/config.yaml`), so Snakemake schedules them together and re-running re-does
only what changed. Written: `results/every_slice/folds.tsv` (every fold, method and metric),
`results/every_slice/summary.tsv` (fold mean and spread), `docs/results/every_slice.md` (the
table of record, with the commit and config it was made with, unless `--no-docs`; the sections of
datasets not in this run stay as they were). Prints one
line of JSON per dataset (and variant), last.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alphastomics.preprocess import slice_ids_in_file  # noqa: E402
from alphastomics.report.tables import MAIN_METHOD, is_reference, judged_metric  # noqa: E402
from alphastomics.metrics import METRIC_DIRECTION  # noqa: E402
from alphastomics.peers import LOWER_BOUNDS  # noqa: E402

BUNDLED = REPO / "config" / "config.yaml"
BENCHMARK_CONFIGS = REPO / "config" / "benchmarks"
DEFAULT_DATASETS = ["starmap_mpfc", "bdtnp_drosophila", "seqfish_mouse_embryo", "osmfish_sscortex"]
# (mode, metric, judged against): "peers" every non-reference method of the mode; "references"
# the real training slices (joint: is the generated tissue as close as a real slice is?)
HEADLINE = [
    ("expr_to_pos", "distance_spearman_median", "peers"),
    ("expr_to_pos", "knn_preservation_k10", "peers"),
    ("pos_to_expr", "expr_mean_pearson_gene_median", "peers"),
    ("impute", "expr_mean_spearman_gene_median", "peers"),
    ("joint", "expr_energy_distance_pca", "references"),
    ("joint", "cell_type_composition_l1", "references"),
    ("joint", "cell_type_composition_l1_typed", "references"),
    ("joint", "morans_i_corr", "references"),
    # shared frames: each cell's distance from its true place, no alignment
    ("expr_to_pos", "position_error_median", "peers"),
    # a generated section spaced and filled as a real one (a shell stays a shell)
    ("joint", "nn_distance_wasserstein_rel", "references"),
    ("joint", "density_spread_ratio", "references"),
    # sections with a place (section_axis): shown per fold, judged by no peer
    ("expr_to_pos", "place_centre_error_abs", "shown"),
    ("joint", "place_inside_fraction", "shown"),
]


def dataset_spec(name: str) -> tuple[dict, dict]:
    """(the dataset's entry, the config it comes from): the bundled config, else config/benchmarks/<name>.yaml."""
    bundled = yaml.safe_load(BUNDLED.read_text())
    if name in bundled["datasets"]:
        return bundled["datasets"][name], bundled
    path = BENCHMARK_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        known = sorted(bundled["datasets"]) + sorted(p.stem for p in BENCHMARK_CONFIGS.glob("*.yaml"))
        raise SystemExit(f"every_slice: no dataset {name!r} in {BUNDLED} nor {path} (known: {', '.join(known)})")
    config = yaml.safe_load(path.read_text())
    return config["datasets"][name], config


def dataset_slices(spec: dict) -> list[str]:
    ids = []
    for platform in spec["platforms"].values():
        slabs = platform.get("slabs")
        for path in platform["files"]:
            ids += slice_ids_in_file(REPO / path, platform.get("slice_key"),
                                     (slabs["axis"], slabs["count"]) if slabs else None)
    return sorted(ids)


def has_labels(spec: dict) -> bool:
    return any(p.get("cell_type_key") for p in spec["platforms"].values())


def fold_datasets(names: list[str], labels: str) -> tuple[dict, list[dict]]:
    """Fold entries for the generated config, and one record per fold (dataset, variant, slice)."""
    entries, folds = {}, []
    for name in names:
        spec, _ = dataset_spec(name)
        slices = dataset_slices(spec)
        if len(slices) < 2:
            raise SystemExit(f"every_slice: {name} has {len(slices)} slice(s); holding one out needs at least 2")
        if not has_labels(spec):
            variants = ["no labels in the data"]
        else:
            variants = {"both": ["labels", "no labels"], "with": ["labels"], "without": ["no labels"]}[labels]
        for variant in variants:
            for i, held_out in enumerate(slices):
                fold = copy.deepcopy(spec)
                fold["test_slices"] = [held_out]
                fold["validation_slices"] = []
                if variant == "no labels":
                    for platform in fold["platforms"].values():
                        platform.pop("cell_type_key", None)
                key = f"{name}-fold{i}" + ("-nolabels" if variant == "no labels" else "")
                entries[key] = fold
                folds.append({"fold_dataset": key, "dataset": name, "variant": variant, "slice": held_out})
    return entries, folds


def generated_config(names: list[str], labels: str, overlay: str | None) -> tuple[dict, list[dict]]:
    """The bundled config's settings (with the overlay's), every fold as a dataset."""
    config = yaml.safe_load(BUNDLED.read_text())
    for name in names:
        # a benchmark config may set its own model or training settings: they apply to its folds
        # only when it is the one dataset run, so that folds of several datasets share one model setup
        _, source = dataset_spec(name)
        if len(names) == 1 and source is not None:
            for key, value in source.items():
                if key != "datasets":
                    config[key] = _merged(config.get(key), value)
    if overlay:
        for key, value in yaml.safe_load(Path(overlay).read_text()).items():
            if key != "datasets":
                config[key] = _merged(config.get(key), value)
    entries, folds = fold_datasets(names, labels)
    config["datasets"] = entries
    # spatial domains are not among the headline figures; their peers would only cost time
    config.setdefault("methods", {})["domains"] = []
    return config, folds


def _merged(base, update):
    if isinstance(base, dict) and isinstance(update, dict):
        out = dict(base)
        for k, v in update.items():
            out[k] = _merged(base.get(k), v)
        return out
    return copy.deepcopy(update)


def run_folds(config_path: Path, folds: list[dict], cores: int, extra: list[str]) -> float:
    targets = [f"results/{f['fold_dataset']}/metrics.tsv" for f in folds]
    command = ["snakemake", "--configfile", str(config_path), "--cores", str(cores), "--keep-going", *extra, "--", *targets]
    print("running:", " ".join(command[:6]), f"... ({len(targets)} folds)", file=sys.stderr, flush=True)
    started = time.time()
    done = subprocess.run(command, cwd=REPO)
    if done.returncode != 0:
        print(f"every_slice: snakemake exited with {done.returncode}; gathering the folds that finished", file=sys.stderr)
    return time.time() - started


def fold_table(folds: list[dict]) -> pd.DataFrame:
    """Every fold's headline figures, one row per (fold, mode, metric, method); AlphaSTomics judged
    on its point estimate where the report does (the consensus layout in expr_to_pos)."""
    rows = []
    for fold in folds:
        path = REPO / "results" / fold["fold_dataset"] / "metrics.tsv"
        if not path.is_file():
            continue
        metrics = pd.read_csv(path, sep="\t")
        metrics = metrics[metrics["slice"].astype(str) == str(fold["slice"])] if "slice" in metrics else metrics
        for mode, metric, against in HEADLINE:
            sub = metrics[metrics["mode"] == mode]
            for method in sorted(sub["method"].unique()):
                available = set(sub[sub["method"] == method]["metric"])
                judged = judged_metric(mode, method, metric, available)
                values = sub[(sub["method"] == method) & (sub["metric"] == judged)]["value"]
                if values.empty:
                    continue
                role = "model" if method == MAIN_METHOD else "reference" if is_reference(method) else "peer"
                rows.append({**fold, "mode": mode, "metric": metric, "judged_as": judged, "against": against,
                             "method": method, "role": role, "value": float(values.mean())})
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Fold mean, spread (sample standard deviation), min and max per dataset, variant, mode, metric and method.
    Real training slices are pooled into one row, `real slices`, whose min and max are the range to be within."""
    if table.empty:
        return table
    t = table.copy()
    real = t["method"].str.startswith("real")
    t.loc[real, "method"] = "real slices"
    grouped = t.groupby(["dataset", "variant", "mode", "metric", "against", "method", "role"])["value"]
    summary = grouped.agg(mean="mean", sd="std", min="min", max="max", folds="count").reset_index()
    return summary


def verdicts(summary: pd.DataFrame) -> list[dict]:
    """Per dataset, variant and headline: AlphaSTomics' fold mean against the best peer's fold mean
    (peers) or within the real slices' range (references)."""
    out = []
    for (dataset, variant, mode, metric), sub in summary.groupby(["dataset", "variant", "mode", "metric"], sort=False):
        mine = sub[sub["method"] == MAIN_METHOD]
        if mine.empty:
            continue
        mean = float(mine["mean"].iloc[0])
        direction = METRIC_DIRECTION.get(metric, "higher")
        against = sub["against"].iloc[0]
        row = {"dataset": dataset, "variant": variant, "mode": mode, "metric": metric, "alphastomics": mean,
               "alphastomics_sd": float(mine["sd"].iloc[0]) if np.isfinite(mine["sd"].iloc[0]) else None}
        if against == "shown":
            row.update(met=None, verdict="shown, not judged")
        elif against == "references":
            real = sub[sub["method"] == "real slices"]
            if real.empty:
                row.update(met=None, verdict="no real slice scored")
            else:
                low, high = float(real["min"].iloc[0]), float(real["max"].iloc[0])
                # a ratio best at 1 must lie inside the range; otherwise no worse than its worst end
                ok = (low <= mean <= high if direction == "one" else mean <= high if direction == "lower" else mean >= low)
                row.update(met=bool(ok), real_min=low, real_max=high,
                           verdict=("within" if ok else "outside") + f" the real slices' range [{low:.3g}, {high:.3g}]")
        else:
            peers = sub[sub["role"] == "peer"]
            peers = peers[np.isfinite(peers["mean"])]
            # a lower bound (random, the training mean) is no rival of its own: with nothing else
            # run (kNN of positions in per-slice frames) the mode is not judged
            real_peers = peers[~peers["method"].isin(LOWER_BOUNDS)]
            if real_peers.empty:
                bounds = ", ".join(sorted(peers["method"])) or "none"
                row.update(met=None, verdict=f"no peer applies (lower bounds only: {bounds})")
            else:
                best = peers.sort_values("mean", ascending=direction == "lower").iloc[0]
                ok = mean >= best["mean"] if direction == "higher" else mean <= best["mean"]
                row.update(met=bool(ok), best_peer=str(best["method"]), best_peer_mean=float(best["mean"]),
                           verdict=("at least" if ok else "behind") + f" {best['method']} ({best['mean']:.3g})")
        out.append(row)
    return out


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    except OSError:
        return "unknown"


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.3g}"


PAGE_INTRO = [
    "# Every slice held out in turn",
    "",
    "Each fold trains on the other slices of its dataset and is scored on the held-out one; figures are fold means "
    "± standard deviation over folds. AlphaSTomics' `expr_to_pos` is judged on its consensus layout. `joint` is judged "
    "against the real training slices scored like generated ones: the target is to lie within their range. Each "
    "dataset's section says which run, commit and config made it (a run of some datasets replaces their sections only).",
    "",
]


def markdown(summary: pd.DataFrame, judged: list[dict], folds: list[dict], scored: dict, wall_s: float | None, args) -> str:
    shown = ["--note ..." if a == args.note else a for a in sys.argv[1:] if a != "--note"]  # the note follows in full
    made = (f"Written by `python benchmarks/every_slice.py{' ' + ' '.join(shown) if shown else ''}` "
            f"on {dt.date.today().isoformat()} at commit {git_commit()}, config `config/config.yaml`"
            + (f" with `{args.overlay}`" if args.overlay else "") + "."
            + (f" Wall time of the run: {wall_s / 60:.0f} min on {args.cores} cores." if wall_s is not None else ""))
    lines = list(PAGE_INTRO)
    fold_list = {}
    for f in folds:
        fold_list.setdefault((f["dataset"], f["variant"]), []).append(f["slice"])
    for (dataset, variant), sub in summary.groupby(["dataset", "variant"], sort=False):
        planned = fold_list.get((dataset, variant), [])
        done = scored.get((dataset, variant), 0)
        lines += [f"## {dataset} ({variant}; held out in turn: {', '.join(planned)}; "
                  f"{done} of {len(planned)} folds scored)", "", made, ""]
        if args.note:
            lines += [args.note, ""]
        lines += ["| mode | metric | AlphaSTomics | peers (fold mean ± sd) | real slices (range) | verdict |", "|---|---|---|---|---|---|"]
        for v in [j for j in judged if j["dataset"] == dataset and j["variant"] == variant]:
            rows = sub[(sub["mode"] == v["mode"]) & (sub["metric"] == v["metric"])]
            peers = rows[rows["role"] == "peer"].sort_values("method")
            peer_text = "; ".join(f"{r.method} {_fmt(r.mean)} ± {_fmt(r.sd)}" for r in peers.itertuples()) or "–"
            real = rows[rows["method"] == "real slices"]
            real_text = f"{_fmt(real['min'].iloc[0])} – {_fmt(real['max'].iloc[0])}" if not real.empty else "–"
            mark = {True: "**met**", False: "not met", None: "–"}[v["met"]]
            lines.append(f"| {v['mode']} | {v['metric']} | {_fmt(v['alphastomics'])} ± {_fmt(v['alphastomics_sd'])} | "
                         f"{peer_text} | {real_text} | {mark}: {v['verdict']} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def merged_page(new_text: str, old_text: str) -> str:
    """The page of record: this run's dataset sections, and the other datasets' sections of the page
    as it was (a section is a '## ' heading up to the next one; one dataset may have several, by
    labels variant). Sections of a page written before sections carried their own provenance get
    the page's provenance line."""
    def sections(text: str) -> list[str]:
        parts = re.split(r"(?m)^(?=## )", text)
        return [p for p in parts if p.startswith("## ")]

    def dataset_of(section: str) -> str:
        return section[3:].split(" ", 1)[0]

    old_lines = old_text.splitlines()
    old_made = " ".join(line for line in old_lines if line.startswith(("Written by ", "Wall time of the run")))
    new_sections = sections(new_text)
    replaced = {dataset_of(s) for s in new_sections}
    kept = []
    for section in sections(old_text):
        if dataset_of(section) in replaced:
            continue
        if "Written by " not in section and old_made:
            heading, _, body = section.partition("\n")
            section = f"{heading}\n\n{old_made}\n{body}"
        kept.append(section.rstrip("\n") + "\n\n")
    return "\n".join(PAGE_INTRO) + "\n" + "".join(s.rstrip("\n") + "\n\n" for s in new_sections) + "".join(kept)


def add_run_arguments(p: argparse.ArgumentParser, name: str, runs: str) -> None:
    """The arguments of a benchmark that runs Snakemake and gathers a page, docs/results/<name>.md."""
    p.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    p.add_argument("--out", default=f"results/{name}")
    p.add_argument("--gather-only", action="store_true", help=f"do not run; gather the {runs} already run")
    p.add_argument("--no-docs", action="store_true", help=f"do not write docs/results/{name}.md")
    p.add_argument("--note", default="", help=f"a sentence for the page on how its {runs} were made (e.g. {runs} gathered from "
                                              "runs at several commits)")
    p.add_argument("snakemake_args", nargs="*", help="after --: passed to snakemake (e.g. -n)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=DEFAULT_DATASETS)
    p.add_argument("--labels", choices=("both", "with", "without"), default="both",
                   help="labelled datasets: train with their cell-type labels, without, or both (default)")
    p.add_argument("--overlay", default=None, help="a config whose settings override the bundled config's (e.g. config/full.yaml)")
    add_run_arguments(p, "every_slice", "folds")
    args = p.parse_args()

    config, folds = generated_config(args.datasets, args.labels, args.overlay)
    out = REPO / args.out
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    (out / "folds.json").write_text(json.dumps(folds, indent=1) + "\n")
    wall = None if args.gather_only else run_folds(config_path, folds, args.cores, args.snakemake_args)
    if args.snakemake_args and any(a in ("-n", "--dry-run", "--dryrun") for a in args.snakemake_args):
        return 0

    table = fold_table(folds)
    if table.empty:
        print(json.dumps({"error": "no fold has metrics yet", "folds": len(folds)}))
        return 1
    table.to_csv(out / "folds.tsv", sep="\t", index=False)
    summary = summarise(table)
    summary.to_csv(out / "summary.tsv", sep="\t", index=False)
    judged = verdicts(summary)
    scored = table.groupby(["dataset", "variant"])["slice"].nunique().to_dict()
    text = markdown(summary, judged, folds, scored, wall, args)
    (out / "every_slice.md").write_text(text)
    if not args.no_docs:
        docs = REPO / "docs" / "results" / "every_slice.md"
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(merged_page(text, docs.read_text() if docs.is_file() else ""))
    print(text)
    for (dataset, variant), _ in summary.groupby(["dataset", "variant"], sort=False):
        mine = [j for j in judged if j["dataset"] == dataset and j["variant"] == variant]
        done = scored.get((dataset, variant), 0)
        line = {"dataset": dataset, "variant": variant, "folds": int(done),
                "folds_planned": sum(1 for f in folds if f["dataset"] == dataset and f["variant"] == variant),
                "targets_met": sum(1 for j in mine if j["met"]), "targets_judged": sum(1 for j in mine if j["met"] is not None),
                **{f"{j['mode']}.{j['metric']}": round(j["alphastomics"], 4) for j in mine},
                **{f"{j['mode']}.{j['metric']}.best_peer": round(j["best_peer_mean"], 4) for j in mine if "best_peer_mean" in j},
                "wall_s": None if wall is None else round(wall)}
        print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
