"""``carpulse doctor``: does another installed distribution also provide one of our top-level
import names (``core``, ``models``, ``edge``...)? The packages install under those generic names
(README "Import names"), so a second ``models`` or ``core`` in the same environment would
shadow ours or be shadowed by it; this says so instead of failing later with a strange
ImportError."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from importlib.metadata import packages_distributions
from typing import Annotated

import typer

OURS = ("carpulse", "core", "firmware_bridge", "edge", "models", "stream", "crm", "dashboards")
DIST = "carpulse"


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def clashes(provided: Mapping[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Our top-level names that another distribution also provides: name -> its distributions
    (``provided``: ``importlib.metadata.packages_distributions()``, read afresh by default)."""
    by_name = packages_distributions() if provided is None else provided
    out = {}
    for name in OURS:
        others = sorted({d for d in by_name.get(name, ()) if _canonical(d) != DIST})
        if others:
            out[name] = others
    return out


def origin(name: str) -> str:
    """Where ``import name`` resolves in this interpreter (a file or folder), or why not."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as err:
        return f"not importable: {err}"
    if spec is None:
        return "not importable"
    if spec.origin and spec.origin != "namespace":
        return spec.origin
    return ", ".join(spec.submodule_search_locations or []) or "a namespace package"


def doctor_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Check the installation: no other distribution provides carpulse's top-level names."""
    import json

    found = clashes()
    if as_json:
        doc = {n: {"others": found.get(n, []), "imports_from": origin(n)} for n in OURS}
        typer.echo(json.dumps(doc))
    else:
        for name in OURS:
            if name in found:
                typer.echo(
                    f"clash  {name}: also installed by {', '.join(found[name])}; "
                    f"`import {name}` resolves to {origin(name)}"
                )
            else:
                typer.echo(f"ok     {name}")
    if found:
        raise typer.Exit(1)
