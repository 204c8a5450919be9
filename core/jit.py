"""The ``njit`` of the edge agent's kernels: numba's JIT, or the same kernels compiled ahead of time.

A kernel module writes ``from core.jit import njit`` instead of ``from numba import njit``. By
default the decorator is numba's. When ``use_aot`` has loaded a build made by ``carpulse edge
build-kernels`` (an extension module compiled with ``numba.pycc``) for these exact sources, the
decorator hands back the compiled function instead and numba, hence LLVM (about 110-140 MB
resident), is never imported: the point of issue 21 item 1. A build is used only when its digest
(``kernel_digest``: the kernel sources and the modules they import, the signatures, Python, numba
and numpy versions, the machine) equals the one of this process; otherwise numba compiles the
kernels as before. Kernels the build does not list keep numba's JIT (which imports numba).

The compiled functions trust their arguments' dtypes and shapes (an ``uint8`` array passed where
``int64`` is expected would be read as garbage, not rejected), so each call is checked against the
signature it was built for and refused with ``TypeError``; numba's own dispatch does the same.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MODULE = "carpulse_aot_kernels"  # the extension's import name (PyInit_<name>): fixed by pycc
MANIFEST = MODULE + ".json"  # written last: a build without one is incomplete and never loaded
OUR_PACKAGES = ("core", "firmware_bridge", "edge", "models")

# (module, function, numba signature) of every kernel of the build; see edge.aot.AOT_KERNELS.
Kernel = tuple[str, str, str]

_loaded: dict[str, Callable[..., Any]] | None = None  # "module.function" -> checked AOT function
_aot_modules: frozenset[str] = frozenset()


def njit(signature: str | None = None, **flags: Any) -> Callable[[Callable[..., Any]], Any]:
    """numba's ``njit(**flags)`` (``njit(signature, **flags)``: compiled eagerly for that one
    signature), or the ahead-of-time function when a loaded build has it.

    A function of a module of the build that the build does not export is a helper compiled into
    the kernels that call it: it stays a plain Python function (numba is not imported for it).
    """

    def decorate(fn: Callable[..., Any]) -> Any:
        if _loaded is not None and fn.__module__ in _aot_modules:
            return _loaded.get(f"{fn.__module__}.{fn.__qualname__}", fn)
        import numba

        if signature is None:
            return numba.njit(**flags)(fn)
        return numba.njit(signature, **flags)(fn)

    return decorate


def aot_active() -> bool:
    """True when this process runs ahead-of-time kernels (``use_aot`` succeeded)."""
    return _loaded is not None


def _version(dist: str) -> str:
    """A distribution's version without importing it (importing numba maps LLVM)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _origin(module: str) -> Path | None:
    """The file of ``a.b.c`` found on disk from package ``a``'s folder: importing ``a.b`` to find
    it could import a kernel module before ``use_aot`` (and numba with it)."""
    top, *rest = module.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin else None
    for base in spec.submodule_search_locations or ():
        path = Path(base).joinpath(*rest)
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def source_files(modules: Sequence[str]) -> list[Path]:
    """The kernel modules' files and those of our modules they import directly (their constants
    are compiled into the kernels), sorted."""
    files: set[Path] = set()
    for module in modules:
        path = _origin(module)
        if path is None:
            raise ImportError(f"kernel module {module} not found")
        files.add(path)
        for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name.split(".")[0] in OUR_PACKAGES and (dep := _origin(name)) is not None:
                    files.add(dep)
    return sorted(files)


def kernel_digest(kernels: Sequence[Kernel]) -> str:
    """SHA-256 of what a build depends on: sources, signatures, interpreter, numba, numpy, machine."""
    h = hashlib.sha256()
    env = {
        "python": sys.implementation.cache_tag,
        "machine": platform.machine(),
        "numba": _version("numba"),
        "llvmlite": _version("llvmlite"),
        "numpy": _version("numpy"),
        "kernels": [list(k) for k in kernels],
    }
    h.update(json.dumps(env, sort_keys=True).encode())
    for path in source_files(sorted({m for m, _, _ in kernels})):
        h.update(f"\0{path.name}\0".encode())  # the name, not the install path: relocatable
        h.update(path.read_bytes())
    return h.hexdigest()


def _describe(v: Any) -> str:
    if not isinstance(v, np.ndarray):
        return type(v).__name__
    return _describe_spec(v.dtype, v.ndim, v.flags.c_contiguous, v.flags.writeable)


def _describe_spec(dtype: Any, ndim: int, contiguous: bool, writable: bool) -> str:
    flags = ("C-contiguous " if contiguous else "") + ("writable " if writable else "read-only ")
    return f"a {flags}{ndim}-d {dtype} array"


def _checked(fn: Callable[..., Any], key: str, args: list[list[Any]]) -> Callable[..., Any]:
    """``fn`` behind a check of each argument against the signature it was compiled for."""
    specs: list[tuple[str, Any, int, bool, bool]] = []
    for a in args:
        if a[0] == "array":  # ["array", dtype, ndim, C-contiguous, written by the kernel]
            specs.append(("array", np.dtype(a[1]), int(a[2]), bool(a[3]), bool(a[4])))
        elif a[0] in ("int", "float", "bool"):
            specs.append((a[0], None, 0, False, False))
        else:
            raise ValueError(f"{key}: unsupported argument kind {a[0]!r}")
    scalar_types: dict[str, tuple[type, ...]] = {
        "int": (int, np.integer),
        "float": (float, int, np.floating, np.integer),
        "bool": (bool, np.bool_),
    }
    n = len(specs)

    def call(*values: Any) -> Any:
        if len(values) != n:
            raise TypeError(f"{key}: {len(values)} arguments, the AOT build takes {n}")
        for i, (v, (kind, dtype, ndim, contiguous, writes)) in enumerate(
            zip(values, specs, strict=True)
        ):
            if kind == "array":
                if not (
                    isinstance(v, np.ndarray)
                    and v.dtype == dtype
                    and v.ndim == ndim
                    and (not contiguous or v.flags.c_contiguous)
                    and (not writes or v.flags.writeable)
                ):
                    raise TypeError(
                        f"{key}: argument {i} is {_describe(v)}, the AOT build takes "
                        f"{_describe_spec(dtype, ndim, contiguous, writes)}"
                    )
            elif not isinstance(v, scalar_types[kind]) or (kind == "int" and isinstance(v, bool)):
                raise TypeError(f"{key}: argument {i} is {type(v).__name__}, expected {kind}")
        return fn(*values)

    call.__name__ = call.__qualname__ = key.rsplit(".", 1)[1]
    call.__doc__ = f"{key}, compiled ahead of time (carpulse edge build-kernels)."
    return call


def use_aot(directory: Path, kernels: Sequence[Kernel]) -> tuple[bool, str]:
    """Load the build in ``directory`` if it was made for ``kernels`` as they are now.

    Returns ``(loaded, one line to log)``. Must run before the kernel modules are imported; the
    manifest is read as untrusted input (a malformed one means "no build"). Whatever goes wrong,
    the kernels fall back to numba's JIT, so the agent keeps working.
    """
    global _loaded, _aot_modules
    modules = {m for m, _, _ in kernels}
    imported = sorted(m for m in modules if m in sys.modules)
    if imported:
        raise RuntimeError(f"use_aot must run before the kernels are imported ({imported})")
    fallback = "numba compiles the kernels at start"
    manifest = directory / MANIFEST
    try:
        doc = json.loads(manifest.read_text())
    except FileNotFoundError:
        return False, (
            f"kernels: no ahead-of-time build in {directory} (`carpulse edge build-kernels` "
            f"makes one): {fallback}"
        )
    except (OSError, ValueError) as err:
        return False, f"kernels: {manifest} is unreadable ({err}): {fallback}"
    want = kernel_digest(kernels)
    if not isinstance(doc, dict) or doc.get("digest") != want:
        got = str(doc.get("digest", "?"))[:12] if isinstance(doc, dict) else "?"
        return False, (
            f"kernels: the ahead-of-time build in {directory} is stale (built for {got}, these "
            f"sources and versions are {want[:12]}; run `carpulse edge build-kernels` again): "
            f"{fallback}"
        )
    try:
        file = str(doc["file"])
        if Path(file).name != file or not file.startswith(MODULE + "."):
            raise ValueError(f"bad file name {file!r}")
        for path in (directory, manifest, directory / file):
            if path.stat().st_mode & 0o002:  # anyone could swap the code the agent runs
                raise ValueError(f"{path} is writable by every user")
        entries = doc["kernels"]
        if sorted(entries) != sorted(f"{m}.{f}" for m, f, _ in kernels):
            raise ValueError("the kernel list differs")
        loader = importlib.machinery.ExtensionFileLoader(MODULE, str(directory / file))
        spec = importlib.util.spec_from_file_location(MODULE, directory / file, loader=loader)
        if spec is None:
            raise ImportError(f"cannot load {directory / file}")
        ext = importlib.util.module_from_spec(spec)
        loader.exec_module(ext)
        loaded = {
            key: _checked(getattr(ext, e["export"]), key, e["args"]) for key, e in entries.items()
        }
    except (ImportError, OSError, KeyError, TypeError, ValueError, AttributeError) as err:
        return (
            False,
            f"kernels: the ahead-of-time build in {directory} fails to load ({err}): {fallback}",
        )
    _loaded, _aot_modules = loaded, frozenset(modules)
    return True, (
        f"kernels: {len(loaded)} loaded ahead of time from {directory} (build {want[:12]}); "
        "numba is not imported"
    )
