"""numba's on-disk kernel cache for the agent (``[edge] numba_cache_dir``), set before numba loads."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from core.errors import ConfigError


def use_cache_dir(cache_dir: Path | None) -> bool:
    """Cache compiled kernels in ``cache_dir`` (created); False when unset.

    The kernels read ``CARPULSE_NUMBA_CACHE`` when their module is imported and numba reads
    ``NUMBA_CACHE_DIR`` when it is, so this runs before either (``carpulse edge run`` calls it
    first). numba keys each cached kernel by CPU model and features, so a card moved to another
    Pi recompiles instead of loading code for the wrong CPU.
    """
    if cache_dir is None:
        return False
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"edge.numba_cache_dir {cache_dir}: {err.strerror}") from err
    if not os.access(cache_dir, os.W_OK):
        raise ConfigError(f"edge.numba_cache_dir {cache_dir} is not writable by this user")
    if "numba" in sys.modules:
        raise RuntimeError("use_cache_dir must run before numba is imported")
    os.environ["NUMBA_CACHE_DIR"] = str(cache_dir)
    os.environ["CARPULSE_NUMBA_CACHE"] = "1"
    return True
