"""Files that appear whole or not at all: hidden temporaries renamed into place, checksums.

Every output is first written under a hidden temporary name (``.<name>.<host>.<pid>.tmp``) in its
final directory and renamed when complete, so an error or a kill leaves nothing that looks like
output; ``remove_stale_temp_files`` deletes temporaries of dead runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

_HOST = socket.gethostname().replace(".", "_")
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.tmp$")


def temp_path_for(final_path: str | Path) -> Path:
    """Hidden temporary name beside ``final_path``, unique to this host and process."""
    final_path = Path(final_path)
    return final_path.with_name(f".{final_path.name}.{_HOST}.{os.getpid()}.tmp")


def is_temp_file(path: str | Path) -> bool:
    return _TEMP_RE.match(Path(path).name) is not None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(directory: str | Path) -> int:
    """Delete temporaries left by killed runs on this host (their process is gone).

    Temporaries of live processes are kept: the workflow runs one preprocess job per input file
    in the same directory at the same time. Returns the number removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    removed = 0
    for entry in directory.iterdir():
        match = _TEMP_RE.match(entry.name)
        if not match or match["host"] != _HOST:
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and _pid_alive(pid):
            continue
        entry.unlink(missing_ok=True)
        removed += 1
    if removed:
        log.info("removed %d temporary file(s) of an interrupted run in %s", removed, directory)
    return removed


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """``with atomic_output(out) as temp: write(temp)``: ``out`` appears complete when the block
    ends, and not at all when it raises. The writer creates ``temp`` itself, so the file gets the
    usual permissions (umask), not a private temporary's 0600: collaborators can read results."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path_for(path)
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file, or the complete new one."""
    with atomic_output(path) as temp, open(temp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def sha256_file(path: str | Path, block_size: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(block_size):
            digest.update(block)
    return digest.hexdigest()
