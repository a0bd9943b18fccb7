"""File names derived from slice ids (issue 10): any id a user's obs[slice_key] holds -- dots,
spaces, slashes, non-ASCII letters -- maps to a safe, distinct file-name key, recorded in the
manifest so that the key leads back to the user's own id."""

from __future__ import annotations

import re

import pytest

from alphastomics.errors import InputError
from alphastomics.io.names import file_keys_to_slice_ids, slice_file_key

AWKWARD_IDS = [
    "mouse 5 bregma1.5", "mouse 9 bregma1.7", "mäus 14 bregma2.0", "animal7_bregma0.16", "a/b", "a b", "a_b",
    "../etc/passwd", ".hidden", "-starts-with-dash", "semi;colon", "quote'd \"id\"", "日本語", "", "x" * 300,
]


@pytest.mark.parametrize("slice_id", AWKWARD_IDS)
def test_file_key_is_a_plain_file_name(slice_id):
    key = slice_file_key(slice_id)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", key), key
    assert len(key.encode()) <= 80 and ".." not in key
    assert slice_file_key(slice_id) == key  # deterministic


def test_plain_ids_keep_their_name_and_others_stay_readable():
    assert slice_file_key("20180424_BZ14_control") == "20180424_BZ14_control"
    assert slice_file_key("animal7_bregma0.16") == "animal7_bregma0.16"
    assert slice_file_key("mouse 5 bregma1.5").startswith("mouse_5_bregma1.5-")
    assert slice_file_key("mäus 14 bregma2.0").startswith("maus_14_bregma2.0-")


def test_distinct_ids_get_distinct_keys_even_ignoring_case():
    keys = [slice_file_key(s) for s in AWKWARD_IDS]
    assert len({k.casefold() for k in keys}) == len(AWKWARD_IDS)
    assert file_keys_to_slice_ids(AWKWARD_IDS) == dict(zip(keys, AWKWARD_IDS))


def test_keys_map_back_to_ids_and_collisions_are_refused():
    ids = ["mouse 5 bregma1.5", "a/b", "plain"]
    assert file_keys_to_slice_ids(ids) == {slice_file_key(s): s for s in ids}
    clash = slice_file_key("a b")  # an id that happens to spell another id's key
    with pytest.raises(InputError, match=re.escape(repr(clash))):
        file_keys_to_slice_ids(["a b", clash])
    # on a case-insensitive file system Slice.joint.h5ad and slice.joint.h5ad are one file
    with pytest.raises(InputError, match="'Slice' and 'slice'"):
        file_keys_to_slice_ids(["Slice", "slice"])
