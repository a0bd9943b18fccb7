"""File names derived from slice ids.

A slice id is whatever the user's ``obs[slice_key]`` holds: Bregma notation with dots
(``animal7_bregma0.16``), spaces, slashes, non-ASCII letters. Files are never named by the raw id;
they are named by its *file key*:

- an id that is already a plain file name (ASCII letters, digits, ``.``, ``_``, ``-``, starting
  with a letter or digit, at most ``MAX_PLAIN_LENGTH`` characters) is its own key, so common ids
  keep readable file names;
- any other id becomes an ASCII slug of it (accents dropped, other characters replaced by ``_``)
  followed by ``-`` and 8 hex digits of the SHA-1 of the exact id, so ids that slug alike still
  get distinct keys.

Keys are derived, not stored, so the workflow can name a test slice's files from the config
alone; the manifest also records each slice's key (``slices.<id>.file_key``) for people and tools
reading ``results/``. ``file_keys_to_slice_ids`` maps keys back to ids and refuses two ids whose
keys collide (also when they differ only in case, for case-insensitive file systems).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

from alphastomics.errors import InputError

MAX_PLAIN_LENGTH = 64  # longer keys would push <key>.<mode>.h5ad and its temporaries towards NAME_MAX
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HASH_LENGTH = 8


def slice_file_key(slice_id: str) -> str:
    """The file-name key of a slice id (see the module docstring)."""
    slice_id = str(slice_id)
    if _PLAIN.fullmatch(slice_id) and len(slice_id) <= MAX_PLAIN_LENGTH and ".." not in slice_id:
        return slice_id
    ascii_text = unicodedata.normalize("NFKD", slice_id).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9.-]+|\.{2,}", "_", ascii_text).strip("._-")
    slug = slug[:MAX_PLAIN_LENGTH].rstrip("._-") or "slice"
    digest = hashlib.sha1(slice_id.encode("utf-8")).hexdigest()[:_HASH_LENGTH]
    return f"{slug}-{digest}"


def file_keys_to_slice_ids(slice_ids: Iterable[str]) -> dict[str, str]:
    """``{file key: slice id}`` for ``slice_ids``; InputError naming both ids when two keys collide."""
    by_key: dict[str, str] = {}
    by_folded: dict[str, str] = {}
    for slice_id in slice_ids:
        key = slice_file_key(slice_id)
        other = by_folded.get(key.casefold())
        if other is not None and other != slice_id:
            raise InputError(
                f"slice ids {other!r} and {slice_id!r} map to the same file name {key!r}; rename one of them"
            )
        by_key[key] = slice_id
        by_folded[key.casefold()] = slice_id
    return by_key
