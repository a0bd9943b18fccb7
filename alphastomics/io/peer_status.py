"""Status records of peer runs (``peers/<method>/<slice>.<mode>.status.json``, docs/FORMATS.md):
writing and reading, so that ``evaluate`` and the runs table read what ``alphastomics peer`` wrote
without importing the peers."""

from __future__ import annotations

import json
from pathlib import Path

from alphastomics.errors import InputError
from alphastomics.io.files import atomic_write_text

STATUS_OK, STATUS_FAILED, STATUS_NOT_APPLICABLE = "ok", "failed", "not applicable"


def write_status(path: str | Path, record: dict) -> None:
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")


def read_status(path: str | Path) -> dict:
    """A status record, with an InputError naming the file when it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: status record not found")
    try:
        status = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable status record ({err})") from None
    missing = [k for k in ("method", "mode", "status") if k not in status]
    if missing or not isinstance(status, dict):
        raise InputError(f"{path}: status record lacks {', '.join(missing) or 'a mapping'}")
    return status
