"""The package files each pipeline stage runs, and their fingerprint.

A stage is an ``alphastomics`` command as a pipeline job runs it: the command line (``cli.py``,
which parses the arguments and caps the threads in every job) and the command's module
(``cli.COMMANDS``), with every package module they import, at the top of a file or inside a
function, followed to the end, and the non-Python package files (templates, the config schema)
that those modules name. The rules carry each stage's fingerprint as a parameter, so an edit to
any of these files re-runs the stage and what follows it, and an edit elsewhere does not.

The files are found from the code itself, not from a list kept by hand: a list drifts as soon as a
module gains an import. ``cli.py`` picks the command's module by name at run time
(``importlib``); that dispatch is not followed, or every stage would hold every command.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

from alphastomics.cli import COMMANDS

PACKAGE = "alphastomics"
PACKAGE_DIR = Path(__file__).resolve().parent
ENTRY = f"{PACKAGE}.cli"


class StageFiles:
    """Import closures of the stages, read from the package at ``package_dir`` (by default this one;
    the pipeline passes the package beside its workflow). Each file is parsed once."""

    def __init__(self, package_dir: str | Path = PACKAGE_DIR):
        self.package_dir = Path(package_dir)
        self._parsed: dict[str, tuple[set[str], set[Path]]] = {}
        self._fingerprints: dict[str, str] = {}
        # the package's files, listed once: modules and the data files they name are looked up here
        self._files = {f for f in self.package_dir.rglob("*") if f.is_file() and "__pycache__" not in f.parts}

    def module_file(self, name: str) -> Path | None:
        """The file of a package module or subpackage (its __init__.py), or None when ``name`` is
        not one (``from alphastomics import MODES`` names a value, not a module)."""
        base = self.package_dir.joinpath(*name.split(".")[1:])
        for path in (base / "__init__.py", base.with_name(base.name + ".py")):
            if path in self._files:
                return path
        return None

    def _read(self, name: str) -> tuple[set[str], set[Path]]:
        """(package modules imported anywhere in a module, non-Python package files it names)."""
        if name not in self._parsed:
            path = self.module_file(name)
            source = path.read_text(encoding="utf-8")
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            imported = set()
            for node in _statements(ast.parse(source, filename=str(path)).body):
                if isinstance(node, ast.Import):
                    imported.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom):
                    origin = node.module or ""
                    if node.level:
                        parts = package.split(".")
                        origin = ".".join(parts[: len(parts) - node.level + 1] + ([origin] if origin else []))
                    imported.add(origin)
                    imported.update(f"{origin}.{alias.name}" for alias in node.names)  # submodules
            modules = set()
            for module in imported:
                if module == PACKAGE or module.startswith(PACKAGE + "."):
                    parts = module.split(".")
                    # importing a.b.c runs the __init__ of a and a.b first
                    modules.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
            named = {f for data, files in self._data_beside(path.parent).items()
                     if f'"{data}"' in source or f"'{data}'" in source for f in files}
            self._parsed[name] = ({m for m in modules if self.module_file(m)}, named)
        return self._parsed[name]

    def _data_beside(self, folder: Path) -> dict[str, list[Path]]:
        """Non-Python files in ``folder`` by the name a module beside them would quote: a file
        (``config.schema.yaml``) or a folder that is not a subpackage (``templates``), as
        ``Path(__file__).with_name(...)`` reads them. Subpackages are reached through imports."""
        data: dict[str, list[Path]] = {}
        for f in self._files:
            if f.suffix == ".py" or not f.is_relative_to(folder):
                continue
            top = folder / f.relative_to(folder).parts[0]
            if top == f or not (top / "__init__.py") in self._files:
                data.setdefault(top.name, []).append(f)
        return data

    def closure(self, *modules: str) -> list[Path]:
        """Package files (paths relative to the package) of ``modules`` and everything they import."""
        seen, todo, files = set(), list(modules), set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            imported, named = self._read(name)
            files.add(self.module_file(name))
            files.update(named)
            todo.extend(imported - seen)
        return sorted(f.relative_to(self.package_dir) for f in files)

    def files(self, stage: str) -> list[Path]:
        """Package files a stage runs: ``stage`` is an ``alphastomics`` command (cli.COMMANDS)."""
        if stage not in COMMANDS:
            raise KeyError(f"stage {stage!r} is not an alphastomics command ({', '.join(COMMANDS)})")
        return self.closure(ENTRY, COMMANDS[stage][0])

    def fingerprint(self, stage: str) -> str:
        if stage not in self._fingerprints:
            digest = hashlib.sha256()
            for relative in self.files(stage):
                digest.update(relative.as_posix().encode())
                digest.update((self.package_dir / relative).read_bytes())
            self._fingerprints[stage] = digest.hexdigest()[:16]
        return self._fingerprints[stage]


def _statements(nodes: list[ast.stmt]):
    """Every statement, however deeply nested (in functions, classes, branches, try blocks):
    imports are statements, so expressions need not be walked."""
    for node in nodes:
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            children = getattr(node, field, None)
            if isinstance(children, list):
                yield from _statements(children)
