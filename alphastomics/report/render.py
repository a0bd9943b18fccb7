"""Render the self-contained HTML pages with jinja2 from the report's parts.

``render_report`` builds ``results/<dataset>/report.html``; ``render_summary`` builds
``results/summary.html`` from the metric tables of several datasets. Both return the HTML text;
``write_atomic`` puts it in place (temporary file + rename). The parts come from ``inputs``
(reading files), ``tables`` (metric tables), ``sections`` (figures) and ``provenance``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from alphastomics.io.files import atomic_write_text
from alphastomics import __version__
from alphastomics.io.manifest import load_manifest, slice_ids_by_file_key
from alphastomics.report import plots
from alphastomics.report.inputs import (
    METRIC_COLUMNS,
    load_metrics,
    load_sample,
    peer_samples,
    sample_groups,
)
from alphastomics.report.provenance import provenance_section
from alphastomics.report.sections import (
    MORAN_K,
    expression_sections,
    gene_accuracy_section,
    layout_comparison_section,
    moran_figures,
    perturbation_section,
    tissue_section,
    training_section,
    uncertainty_section,
)
from alphastomics.report.tables import (
    DIRECTION_SOURCE,
    MODE_DESCRIPTION,
    dataset_summary,
    fmt_value,
    headline_columns,
    metric_tables,
    order_methods,
    order_modes,
    summary_columns,
    summary_rows,
    target_rows,
    targets_text,
)
from alphastomics.report.view3d import view3d_section

log = logging.getLogger(__name__)

TEMPLATE_DIR = Path(__file__).with_name("templates")


def _wbr(text) -> "markupsafe.Markup":  # noqa: F821
    """Escape ``text`` and allow line breaks after dots, underscores, slashes and colons (long file
    names, slice ids, ``real:<slice>`` rows)."""
    import markupsafe

    escaped = str(markupsafe.escape(str(text)))
    return markupsafe.Markup(re.sub(r"([._/:])", r"\1<wbr>", escaped))


def _env():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["thousands"] = lambda v: f"{int(v):,}" if isinstance(v, (int, np.integer)) else v
    env.filters["wbr"] = _wbr
    return env


def place_sentence(record: dict) -> str:
    """Where a section was sampled along its cutting axis, in words (uns['alphastomics']['section_place'])."""
    def number(v) -> str:
        return fmt_value(float(v))

    text = f"sampled at {record.get('axis', '')} {number(record['low'])} to {number(record['high'])} ({record.get('source', '')}"
    if record.get("centre_error") is not None:
        text += f"; true {number(record['true_low'])} to {number(record['true_high'])}, centre off by {number(record['centre_error'])}"
        if record.get("estimate_error_rms") is not None:
            text += f", leave-one-section-out RMS error {number(record['estimate_error_rms'])}"
    text += ")"
    if record.get("outside_training"):
        text += ", outside the training sections' places: extrapolated"
    return text


def render_report(
    manifest: str | Path,
    metrics: list[str | Path],
    samples: list[str | Path] = (),
    dataset: str | None = None,
    training_log: str | Path | None = None,
    config: str | Path | None = None,
    checkpoint: str | Path | None = None,
    log_dir: str | Path | None = None,
    runs: list[str | Path] = (),
    peer_status: list[str | Path] = (),
) -> str:
    """The HTML of one dataset's report. ``peer_status``: the peers' status records (alphastomics
    peer); the sample files of those that ran are drawn beside AlphaSTomics' (expr_to_pos layouts,
    per-gene accuracy of pos_to_expr and impute)."""
    from alphastomics.runs import read_runs

    man = load_manifest(manifest)
    dataset = dataset or man.get("dataset") or Path(manifest).parent.name
    df = load_metrics(list(metrics))
    if not df.empty and (df["dataset"] != dataset).any():
        other = sorted(set(df["dataset"]) - {dataset})
        log.warning("metric table holds rows of other dataset(s) %s; they are left out", ", ".join(other))
        df = df[df["dataset"] == dataset]
    loaded = [load_sample(p, slice_ids_by_file_key(man)) for p in samples]
    # a slice drawn under another condition is not a reconstruction of it: its own section only
    perturbed = [s for s in loaded if (s.meta.get("conditions") or {}).get("slice_conditions")]
    groups = sample_groups([s for s in loaded if s not in perturbed])
    all_types = sorted({t for s in loaded if s.cell_types is not None for t in np.unique(s.cell_types)})
    palette = plots.cell_type_palette(all_types)

    summary = dataset_summary(man)
    run_table = read_runs(list(runs))
    if not run_table.empty:
        run_table = run_table[run_table["dataset"].isin([dataset, ""])]
    tables = metric_tables(df, run_table)
    targets = target_rows(df)
    training = training_section(training_log)
    tissue = tissue_section(groups, palette, dataset_dir=Path(manifest).parent)
    view3d = view3d_section(groups, palette, dataset_dir=Path(manifest).parent)
    peers = peer_samples(peer_status, slice_ids_by_file_key(man))
    layouts = layout_comparison_section(groups, peers, palette)
    gene_maps, moran_panels = expression_sections(groups)
    gene_accuracy = gene_accuracy_section(groups, peers)
    morans = moran_figures(moran_panels)
    uncertainty, uncertainty_note = uncertainty_section(groups)
    perturbations = perturbation_section(perturbed, Path(manifest).parent)
    prov = provenance_section(loaded, config, checkpoint, log_dir, dataset, man)
    sampled = sorted({(s.slice_id, s.mode, s.method) for s in loaded})
    # what the sampler said its generated positions cannot be trusted for (alphastomics.sample.patch_size_caveat)
    caveats = sorted({(s.label, str(s.meta["caveat"])) for s in loaded if s.meta.get("caveat")})
    places = sorted({(s.label, place_sentence(s.meta["section_place"])) for s in loaded
                     if isinstance(s.meta.get("section_place"), dict)})

    return _env().get_template("report.html.j2").render(
        dataset=dataset,
        summary=summary,
        tables=tables,
        training=training,
        tissue=tissue,
        layouts=layouts,
        view3d=view3d,
        caveats=caveats,
        places=places,
        gene_maps=gene_maps,
        morans=morans,
        gene_accuracy=gene_accuracy,
        moran_k=MORAN_K,
        uncertainty=uncertainty,
        uncertainty_note=uncertainty_note,
        perturbations=perturbations,
        prov=prov,
        n_samples=len(loaded),
        sampled_slices=sorted({s for s, _, _ in sampled}),
        sampled_modes=order_modes({m for _, m, _ in sampled}),
        methods=order_methods({m for _, _, m in sampled} | set(df["method"].unique()) | set(run_table["method"].unique())),
        targets=targets,
        runs=run_table.to_dict("records"),
        mode_description=MODE_DESCRIPTION,
        has_3d=any(s.true_pos.shape[1] == 3 for s in loaded),
        direction_source=DIRECTION_SOURCE,
    )


def render_summary(metrics: list[str | Path], reports: dict[str, str] | None = None, out: str | Path | None = None,
                   runs: list[str | Path] = ()) -> tuple[str, str]:
    """HTML of ``results/summary.html``: one headline table over all datasets, modes and methods
    (each method's rank per headline metric, status, wall time and peak memory from ``runs``),
    and the benchmark targets; returns (html, targets as text).

    ``reports`` maps dataset -> report path; without it a link is made to ``report.html`` next to a
    dataset's metric table when that file exists. Links are relative to ``out``'s folder.
    """
    frames = []
    report_links: dict[str, str] = {}
    out_dir = Path(out).resolve().parent if out else Path.cwd()
    for p in metrics:
        df = load_metrics([p])
        frames.append(df)
        for ds in df["dataset"].unique():
            candidate = Path((reports or {}).get(ds, Path(p).parent / "report.html"))
            if candidate.is_file() or (reports and ds in reports):
                report_links[ds] = os.path.relpath(candidate.resolve(), out_dir)
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=METRIC_COLUMNS)
    from alphastomics.runs import read_runs

    run_table = read_runs(list(runs))
    cols = headline_columns(df) if not df.empty else []
    rows = summary_rows(df, cols, run_table)
    columns = summary_columns(cols)
    targets = target_rows(df)
    html = _env().get_template("summary.html.j2").render(
        columns=columns,
        rows=rows,
        datasets=sorted(df["dataset"].unique()),
        slices={ds: sorted(df.loc[df["dataset"] == ds, "slice"].unique()) for ds in df["dataset"].unique()},
        links=report_links,
        mode_description=MODE_DESCRIPTION,
        generated_at=_dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        version=__version__,
        n_metrics=int(df["metric"].nunique()) if not df.empty else 0,
        targets=targets,
    )
    return html, targets_text(targets)


def write_atomic(text: str, out: str | Path) -> Path:
    """Write ``text`` to ``out`` through a temporary file in the same folder and a rename."""
    atomic_write_text(out, text)
    return Path(out)
