"""Memory allocation settings for commands that run the network on whole sections.

A sampling step allocates and frees tensors of (cells x width) and (cells x neighbours x width)
floats many times over. glibc's malloc serves blocks above its mmap threshold (at most 32 MB) from
fresh pages and returns them to the kernel when freed, so every such tensor costs page faults
again: on a 100k-cell section a third of the CPU time of `sample` went to the kernel, and the
share grows with the section, so time grew faster than cells (benchmarks/sampling.py
--part scale). Serving them from the heap and keeping some freed memory there for reuse removes
most of that, for a higher peak (docs/findings/sampling.md). Commands that train keep glibc's
defaults: their memory target is the tighter one (issue 36).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_LARGEST = 2**31 - 1  # mallopt takes an int
MMAP_THRESHOLD_BYTES = _LARGEST  # above any one tensor of a section: all from the heap
TRIM_THRESHOLD_BYTES = _LARGEST  # freed memory the heap keeps for the next tensors, up to 2 GB
TOP_PAD_BYTES = 256 << 20  # the heap grows in steps this large


def reuse_freed_memory() -> bool:
    """Ask glibc to serve large blocks from the heap and keep freed memory for reuse; False where
    the C library is not glibc (nothing changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES), (_M_TOP_PAD, TOP_PAD_BYTES)))
    if not ok:
        log.debug("mallopt refused the allocation settings; glibc defaults kept")
    return ok
