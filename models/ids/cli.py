"""``carpulse ids``: learn a vehicle model's CAN intrusion profile, check one, inject test attacks.

Typer only at import; numpy/numba load inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

ids_app = typer.Typer(
    help="CAN intrusion detection: per vehicle model profiles for the edge agent."
)


@ids_app.command("learn")
def ids_learn(
    logs: Annotated[list[Path], typer.Argument(help="Clean candump -L logs of the vehicle model.")],
    model: Annotated[str, typer.Option("--model", help="Vehicle model the profile is for.")],
    out: Annotated[Path, typer.Option("--out", help="Profile file to write (JSON).")],
    min_flips: Annotated[int, typer.Option(help="Frozen bits flipped to flag a payload.")] = 32,
) -> None:
    """Learn a profile from clean logs and write it (versioned JSON, checked before writing)."""
    from core.errors import ConfigError
    from firmware_bridge.frames import read_candump
    from models.ids.profile import Params, learn

    loaded = []
    for path in logs:
        try:
            raw = path.read_bytes()
        except OSError as err:
            raise ConfigError(f"log {path}: {err.strerror or err}") from err
        frames, report = read_candump(path)  # malformed lines are counted and logged
        if report.bad_lines:
            typer.echo(f"{path}: {report.bad_lines} malformed line(s) left out", err=True)
        loaded.append((str(path), raw, frames))
    try:
        params = Params(min_flips=min_flips)
    except ValueError as err:
        raise ConfigError(f"--min-flips: {err}") from err
    doc = learn(loaded, model, params)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(out)
    typer.echo(
        json.dumps(
            {
                "profile": str(out),
                "vehicle_model": model,
                "ids": len(doc["ids"]),
                "frames": doc["frames"],
                "logs": len(doc["logs"]),
            }
        )
    )


@ids_app.command("check")
def ids_check(
    profile: Annotated[Path, typer.Argument(help="Profile file to check.")],
    log: Annotated[
        Path | None, typer.Option(help="Also score this candump log and count flagged frames.")
    ] = None,
) -> None:
    """Check a profile file as the agent would load it; optionally score a log with it."""
    from models.ids.profile import read_profile

    got = read_profile(profile)
    doc: dict[str, object] = {
        "profile": str(profile),
        "vehicle_model": got.vehicle_model,
        "ids": len(got.profile.keys),
        **got.meta,
    }
    if log is not None:
        import numpy as np

        from firmware_bridge.frames import read_candump
        from models.ids.detector import REASONS

        frames, _ = read_candump(log)
        order = np.argsort(frames.ts_us, kind="stable")
        frames = type(frames)(*(a[order] for a in (frames.ts_us, frames.can_id, frames.extended,
                                                   frames.dlc, frames.data)))  # fmt: skip
        flags = got.detector().score(frames)
        doc["frames"] = len(frames)
        doc["flagged"] = int(np.count_nonzero(flags))
        doc["by_reason"] = {n: int(np.count_nonzero(flags & b)) for b, n in REASONS.items()}
    typer.echo(json.dumps(doc))


@ids_app.command("inject")
def ids_inject(
    log: Annotated[Path, typer.Argument(help="Clean candump -L log.")],
    out: Annotated[Path, typer.Option("--out", help="candump -L log to write.")],
    attack: Annotated[str, typer.Option(help="dos, fuzzing, spoofing or replay.")] = "dos",
    at_s: Annotated[float, typer.Option(help="Start, seconds after the log's first frame.")] = 5.0,
    for_s: Annotated[float, typer.Option(help="Attack length in seconds.")] = 2.0,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write a copy of a log with one attack injected (for tests, demos and profile checks)."""
    import numpy as np

    from core.errors import ConfigError
    from firmware_bridge.frames import read_candump
    from models.ids.attacks import ATTACKS, inject, write_candump

    if attack not in ATTACKS:
        raise ConfigError(f"--attack must be one of {', '.join(ATTACKS)}, not {attack!r}")
    if not (at_s >= 0 and for_s > 0):
        raise ConfigError("--at-s must be >= 0 and --for-s > 0")
    frames, _ = read_candump(log)
    if not len(frames):
        raise ConfigError(f"{log} has no frames")
    t0 = int(frames.ts_us[0])
    start = t0 + int(at_s * 1e6)
    got = inject(frames, attack, start, start + int(for_s * 1e6), np.random.default_rng(seed))
    if got is None:
        raise ConfigError(f"{attack} cannot be injected into {log} at {at_s} s")
    merged, label, info = got
    write_candump(merged, out)
    typer.echo(json.dumps({"out": str(out), "frames": len(merged),
                           "injected": int(label.sum()), **info}))  # fmt: skip
