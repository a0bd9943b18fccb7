"""Stage fingerprints follow the code (issue 33): an edit to any package file re-plans exactly the
rules whose command imports it, however deep the import and wherever it stands in the module.

A copy of the repository is brought up to date once on a tiny config without running anything
(every output made empty, then `snakemake --touch` records each job's parameters, the code
fingerprints among them). Then each package file of the copy is edited in turn, and Snakemake,
planning without running (`--list-changes params`), says which rules' parameters changed: the
jobs a dry run re-plans for that edit before it adds what follows them (tests/test_reruns.py
checks the dry runs themselves). Which rules should change is worked out here without
alphastomics.stages: the command each rule runs (its printed shell command, `alphastomics
<command>`, and cli.COMMANDS) and Python's modulefinder, which reads the imports from compiled
code, restricted to the package. The runs are forked from one process that has imported
Snakemake once, so that each costs the workflow's parsing, not a new interpreter.
"""

import json
import modulefinder
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alphastomics.cli import COMMANDS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
STARMAP = sorted((REPO / "resources/starmap_mpfc").glob("*.h5ad"))

# Non-Python files of the package and the module that reads them: a new one must be named here,
# and then an edit to it must re-run the stages of that module.
DATA_READERS = {"config.schema.yaml": "alphastomics.config", "report/templates/": "alphastomics.report.render"}

# Reads requests (JSON lines: argv, working directory, output file) and answers each with the exit
# status of `snakemake <argv>` run in a forked child, its output in the file. Each job whose
# parameters differ from those recorded is printed as `params changed: <rule>`: a dry run's reasons
# would not do (a job re-run for its inputs is not checked for changed parameters) and neither would
# `--list-changes params` (it lists every output, changed or not), so `--list-changes params` runs
# the check on every job and this prints the jobs that it finds changed.
DRY_RUN_SERVER = """
import json, os, sys
import snakemake.cli
from snakemake.persistence import PersistenceBase
# imported once here instead of in every run: Snakemake's scheduler and plugins, and the libraries
# of the package code the workflow calls (the package itself is imported afresh by each run)
from snakemake.scheduling import job_scheduler
import anndata, h5py, jsonschema, numpy, pandas, pyarrow.parquet, scipy.sparse, yaml
snakemake.cli.get_argument_parser()
check = PersistenceBase.params_changed
def params_changed(self, job, file=None):
    change = check(self, job, file)
    if change and file is None:
        print("params changed:", job.rule.name, flush=True)
    return change
PersistenceBase.params_changed = params_changed
for line in sys.stdin:
    request = json.loads(line)
    pid = os.fork()
    if pid == 0:
        out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.chdir(request["cwd"])
        code = 1
        try:
            snakemake.cli.main(request["argv"])
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def tiny_config(path: Path) -> Path:
    """One dataset, one held-out slice, one mode, one peer: every rule of the workflow, once or a
    few times. Keys with defaults are left out, so the rules read the defaults."""
    config = {
        "datasets": {"starmap_mpfc": {
            "platforms": {"starmap": {"files": [str(f) for f in STARMAP], "slice_key": "slice_id",
                                      "cell_type_key": "cell_type"}},
            "gene_list": str(REPO / "resources/starmap_mpfc/genes.txt"),
            "test_slices": ["20180424_BZ14_control"],
        }},
        "sampling": {"modes": ["expr_to_pos"]},
        "methods": {"expr_to_pos": ["random"]},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Workflow:
    """The copy of the repository, its working directory, and dry runs forked from one server."""

    def __init__(self, root: Path):
        self.copy, self.workdir = root / "repo", root / "run"
        for sub in ("workflow", "alphastomics", "profiles", "envs"):
            shutil.copytree(REPO / sub, self.copy / sub, ignore=shutil.ignore_patterns("__pycache__"))
        self.workdir.mkdir()
        self.configfile = tiny_config(root / "config.yaml")
        self.out = root / "snakemake.txt"
        env = dict(os.environ, PYTHONPATH=str(self.copy))
        self.server = subprocess.Popen([sys.executable, "-c", DRY_RUN_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, env=env, cwd=self.copy)

    def snakemake(self, *extra: str) -> str:
        argv = ["-s", str(self.copy / "workflow/Snakefile"), "--directory", str(self.workdir),
                "--configfile", str(self.configfile), "--cores", "1", *extra]
        self.server.stdin.write(json.dumps({"argv": argv, "cwd": str(self.copy), "out": str(self.out)}) + "\n")
        self.server.stdin.flush()
        code = int(self.server.stdout.readline())
        text = self.out.read_text()
        assert code == 0, text[-5000:]
        return text

    def close(self):
        self.server.stdin.close()
        self.server.wait(60)


def jobs_of(text: str) -> list[dict]:
    """Jobs of a dry run's output: rule, output files, reason, shell command."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        if m := re.match(r"(?:local)?rule (\w+):", block):
            fields = dict(re.findall(r"^\s+(output|reason): (.*)$", block, re.M))
            shell = re.search(r"^Shell command: (.*)$", block, re.M)
            jobs.append({"rule": m.group(1), "output": fields.get("output", ""), "reason": fields.get("reason", ""),
                         "shell": shell.group(1) if shell else ""})
    return jobs


def command_of(shell: str) -> str | None:
    """The `alphastomics` command a job's shell command runs, or None."""
    tokens = shlex.split(shell)
    if "alphastomics" not in tokens:
        return None
    return next(t for t in tokens[tokens.index("alphastomics") + 1:] if t in COMMANDS)


class PackageFinder(modulefinder.ModuleFinder):
    """modulefinder that follows the package's own modules only."""

    def import_module(self, partname, fqname, parent):
        if fqname != "alphastomics" and not fqname.startswith("alphastomics."):
            return None
        return super().import_module(partname, fqname, parent)


def imported_files(copy: Path, module: str) -> set[str]:
    """Package files (relative paths) a job of `alphastomics` runs for a command of ``module``: the
    command line, the module and what they import, and the data files those modules read."""
    finder = PackageFinder(path=[str(copy)])
    for name in ("alphastomics.cli", module):
        finder.import_hook(name)
    package = copy / "alphastomics"
    files = {Path(m.__file__).relative_to(package).as_posix() for m in finder.modules.values() if m.__file__}
    for data, reader in DATA_READERS.items():
        if reader in finder.modules:
            files |= {f for f in package_files(package) if f == data or f.startswith(data)}
    return files


def package_files(package: Path) -> list[str]:
    return sorted(f.relative_to(package).as_posix() for f in package.rglob("*")
                  if f.is_file() and "__pycache__" not in f.parts)


def params_changed(flow: Workflow) -> set[str]:
    """Rules with a job whose parameters changed since the touched run (DRY_RUN_SERVER)."""
    return set(re.findall(r"^params changed: (\w+)$", flow.snakemake("--list-changes", "params"), re.M))


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    flow = Workflow(tmp_path_factory.mktemp("fingerprints"))
    try:
        plan = jobs_of(flow.snakemake("-n", "-p"))
        for job in plan:
            for output in filter(None, job["output"].split(", ")):
                (flow.workdir / output).parent.mkdir(parents=True, exist_ok=True)
                (flow.workdir / output).touch()
        flow.snakemake("--touch", "--forceall")
        yield flow, plan
    finally:
        flow.close()


def test_every_package_file_reruns_exactly_the_rules_that_import_it(workflow):
    flow, plan = workflow
    package = flow.copy / "alphastomics"
    commands = {job["rule"]: command_of(job["shell"]) for job in plan if job["rule"] != "all"}
    assert "Nothing to be done" in flow.snakemake("-n"), "the touched run is not up to date"
    assert not params_changed(flow)
    assert {"gene_list", "preprocess", "manifest", "train", "export_model", "sample", "evaluate", "peer", "evaluate_peer",
            "method_runs", "gather_metrics", "report", "summary"} <= set(commands), commands
    runs = {rule: imported_files(flow.copy, COMMANDS[command][0]) if command else set() for rule, command in commands.items()}

    files = package_files(package)
    unread = [f for f in files if not f.endswith(".py") and not any(f == d or f.startswith(d) for d in DATA_READERS)]
    assert not unread, f"package files read by no module of DATA_READERS: {unread}"
    wrong = []
    for name in files:
        path = package / name
        original = path.read_bytes()
        path.write_bytes(original + (b"\n# edited by test_fingerprints\n" if name.endswith(".py") else b"\n"))
        try:
            planned = params_changed(flow)
        finally:
            path.write_bytes(original)
        expected = {rule for rule, imported in runs.items() if name in imported}
        if planned != expected:
            wrong.append(f"{name}: re-planned {sorted(planned)}, imported by {sorted(expected)}"
                         f" (missing {sorted(expected - planned)}, extra {sorted(planned - expected)})")
    assert not wrong, "rules re-planned by an edit differ from the rules that import the file:\n" + "\n".join(wrong)
