"""``carpulse edge build-kernels``: the agent's numba kernels compiled ahead of time, once per install.

``numba.pycc`` compiles every kernel of ``AOT_KERNELS`` for its signature into one extension
module (C compiler and Python headers needed: ``gcc`` and ``python3-dev`` on Debian and Raspberry
Pi OS) in ``[edge] aot_dir`` (default ``<state_dir>/kernels``), with a manifest that records the
digest of the sources it was built from (``core.jit.kernel_digest``). ``carpulse edge run`` loads
it when the digest matches (``core.jit.use_aot``) and then never imports numba, which keeps LLVM
out of the agent's memory; a missing or stale build means numba's JIT, as before.

Another kernel joins the build with one line in ``AOT_KERNELS``: its module (which must use
``from core.jit import njit``), its name and the one numba signature the agent calls it with
(``tests/unit/edge/test_aot.py`` checks that it is the signature the JIT sees on a real log).
pycc is deprecated in numba (still in 0.68); the build compiles for the machine's architecture
without CPU-specific features, so a card moved to another Pi of the same architecture keeps it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sysconfig
import tempfile
import time
import warnings
from importlib import import_module
from pathlib import Path
from typing import Any

from core.config import CarpulseSettings
from core.errors import ConfigError
from core.jit import MANIFEST, MODULE, Kernel, kernel_digest, use_aot

_DECODE_SIG = (
    "UniTuple(int64, 3)(uint32[::1], boolean[::1], uint8[::1], uint8[:, ::1], int64[::1], "
    "boolean, int32[::1], int64[::1], int32[::1], int64[:, ::1], int64[:, ::1], int32[:, ::1], "
    "float64[:, ::1], int64[:, ::1], uint64[::1], int64[:, ::1], int64[:, ::1], int64[::1], "
    "int64[:, ::1], uint64[::1], float64[::1], uint32[::1], float32[::1], int32[::1], "
    "int64[::1], float64[::1], int64[::1], int64[::1], int64[::1], int64[::1], int64, int64, int64)"
)
_PERIODIC_SIG = (
    "int64(int32[::1], int32[::1], int64[::1], float64[::1], int64, int64, int64[::1], "
    "float64[::1], float64[::1], float64[::1], int64[::1], float64[::1], int64[::1], int32[::1], "
    "int64[::1], float64[::1], float64[::1], float64[::1], float64[::1])"
)
_ON_CHANGE_SIG = (
    "int64(int32[::1], int32[::1], float64[::1], float64, float64[::1], boolean[::1], int64[::1])"
)
_CRASH_SIG = (
    "int64(int8[::1], int64[::1], float64[::1], int64, int64[:, ::1], float64[:, ::1], "
    "int64[::1], float64[::1], int64[::1], int8[::1], float64[::1], float64[::1], int64[::1])"
)
# models.ids.kernels states these two in its decorators too (explicit signatures): a test checks
# that both say the same (importing them here would load numba before core.jit.use_aot).
_IDS_SLOTS_SIG = "void(uint64[:], uint64[:], int64[:])"
_IDS_SCORE_SIG = (
    "void(int64[:], int64[:], uint8[:], uint8[:, :], uint64[:], uint8[:, :], uint8[:, :], "
    "int64[:], float64[:], float64[:], float64[:], float64, int64[:], float64[:], int64[:], "
    "int64, boolean, uint8[:])"
)

# The kernels the agent runs, one line each: (module, function, numba signature).
AOT_KERNELS: tuple[Kernel, ...] = (
    ("firmware_bridge.decode_kernel", "_decode", _DECODE_SIG),
    ("edge.campaign_kernels", "_periodic", _PERIODIC_SIG),
    ("edge.campaign_kernels", "_on_change", _ON_CHANGE_SIG),
    ("edge.crash", "_crash_kernel", _CRASH_SIG),
    ("models.ids.kernels", "_slots", _IDS_SLOTS_SIG),  # [edge.intrusion]
    ("models.ids.kernels", "_score", _IDS_SCORE_SIG),
)


def kernels_dir(settings: CarpulseSettings) -> Path:
    """Where the build goes and where the agent looks for it."""
    e = settings.edge
    return Path(e.aot_dir) if e.aot_dir is not None else Path(e.state_dir) / "kernels"


def load_agent_kernels(settings: CarpulseSettings) -> tuple[bool, str]:
    """``core.jit.use_aot`` for the agent's kernels (before they are imported); ``(loaded, log line)``."""
    if not settings.edge.aot:
        return False, "kernels: [edge] aot = false: numba compiles the kernels at start"
    return use_aot(kernels_dir(settings), AOT_KERNELS)


def toolchain_problem() -> str | None:
    """What is missing to compile an extension here (a C compiler, Python's headers), or None."""
    cc = (sysconfig.get_config_var("CC") or "gcc").split()[0]
    missing = []
    if shutil.which(cc) is None and shutil.which("gcc") is None:
        missing.append(f"a C compiler ({cc}; Debian/Raspberry Pi OS: apt install gcc)")
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.exists():
        missing.append(f"Python's headers ({include}; apt install python3-dev)")
    return ", ".join(missing) or None


def _arg_spec(t: Any) -> list[Any]:
    """How ``core.jit`` checks one argument of a compiled kernel (from its numba type)."""
    from numba import types
    from numba.np import numpy_support

    if isinstance(t, types.Array):
        dtype = numpy_support.as_dtype(t.dtype).str
        return ["array", dtype, t.ndim, t.layout == "C", bool(t.mutable)]
    if isinstance(t, types.Boolean):
        return ["bool"]
    if isinstance(t, types.Integer):
        return ["int"]
    if isinstance(t, types.Float):
        return ["float"]
    raise ConfigError(f"build-kernels: argument type {t} is not supported ahead of time")


def current_build(
    out_dir: Path, kernels: tuple[Kernel, ...] = AOT_KERNELS
) -> dict[str, Any] | None:
    """The manifest of the build in ``out_dir`` when it was made for ``kernels`` as they are now."""
    try:
        doc = json.loads((out_dir / MANIFEST).read_text())
        if doc["digest"] == kernel_digest(kernels) and (out_dir / Path(doc["file"]).name).exists():
            return doc  # type: ignore[no-any-return]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def build_kernels(
    out_dir: Path, kernels: tuple[Kernel, ...] = AOT_KERNELS, *, force: bool = True
) -> dict[str, Any]:
    """Compile ``kernels`` into ``out_dir`` (replacing an older build atomically); a summary.

    With ``force=False`` a build that is already current is kept (``make setup`` runs it each time).
    """
    if not force and (doc := current_build(out_dir, kernels)) is not None:
        return {
            "dir": str(out_dir),
            "file": doc["file"],
            "digest": doc["digest"][:12],
            "kernels": sorted(doc["kernels"]),
            "up_to_date": True,
        }
    problem = toolchain_problem()
    if problem:
        raise ConfigError(f"build-kernels needs {problem}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"build-kernels: {out_dir}: {err.strerror}") from err
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pycc's deprecation warnings
        import numba
        import numpy as np
        from numba.core import sigutils
        from numba.pycc import CC

    entries: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir) as tmp:
        cc = CC(MODULE)
        cc.output_dir = tmp
        cc.verbose = False
        for module, name, sig in kernels:
            kernel = getattr(import_module(module), name)
            py_func = getattr(kernel, "py_func", None)
            if py_func is None:
                raise ConfigError(f"build-kernels: {module}.{name} is not a numba kernel")
            args, _ = sigutils.normalize_signature(sig)
            export = f"{module}.{name}".replace(".", "__")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cc.export(export, sig)(py_func)
            entries[f"{module}.{name}"] = {
                "export": export,
                "signature": sig,
                "args": [_arg_spec(a) for a in args],
            }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cc.compile()
        built = [p for p in Path(tmp).iterdir() if p.name.startswith(MODULE + ".")]
        if len(built) != 1:
            raise ConfigError(f"build-kernels: pycc wrote {[p.name for p in built]}")
        # A new inode each time: an agent running the old build keeps its mapping intact.
        manifest = out_dir / MANIFEST
        manifest.unlink(missing_ok=True)  # no manifest = no build while the files change
        os.replace(built[0], out_dir / built[0].name)
        doc = {
            "digest": kernel_digest(kernels),
            "file": built[0].name,
            "kernels": entries,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": platform.machine(),
            "numba": numba.__version__,
            "numpy": np.__version__,
        }
        part = Path(tmp) / MANIFEST
        part.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(part, manifest)
    return {
        "dir": str(out_dir),
        "file": doc["file"],
        "digest": doc["digest"][:12],
        "kernels": sorted(entries),
        "seconds": round(time.perf_counter() - t0, 1),
    }
