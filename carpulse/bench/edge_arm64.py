"""``carpulse bench edge-arm64``: the agent's decoder and kernels on arm64 (qemu) vs this machine.

Needs an arm64 Debian root with the agent's wheels, made once (root, about 15 minutes)::

    apt-get install -y qemu-user-static debootstrap binfmt-support
    debootstrap --arch=arm64 --foreign --variant=minbase \\
        --include=python3,python3-venv,python3-pip bookworm /var/tmp/arm64root
    cp /usr/bin/qemu-aarch64-static /var/tmp/arm64root/usr/bin/
    chroot /var/tmp/arm64root /debootstrap/debootstrap --second-stage
    carpulse bench edge-arm64 --setup     # fetches the aarch64 wheels with pip, installs them

Then each run copies this tree's ``core``, ``firmware_bridge``, ``edge`` and ``models`` and the
log into the root, runs ``python -m edge.arch_digest`` there (numba compiles for the emulated
Cortex-A class CPU) and here, and compares every digest: ``identical`` is true only when the
decoded samples, the periodic windows and the on-change selection agree bit for bit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from carpulse.bench.edge import DEFAULT_DBC, DEFAULT_LOG
from core.datasets import shared_data_dir
from core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "firmware_bridge", "edge", "models")
# What the decoder and kernels import on a Pi, pinned to the versions of this environment.
WHEELS: tuple[str, ...] = ("numpy", "numba", "llvmlite", "cantools", "pydantic")
WHEELS += ("pydantic-settings", "python-can", "PyYAML")
COMPARED: tuple[str, ...] = ("frames", "samples", "names", "decoded", "periodic_windows")
COMPARED += ("periodic", "on_change_kept", "on_change")


def _versions() -> list[str]:
    from importlib.metadata import version

    return [f"{n}=={version(n)}" for n in WHEELS]


def _setup(root: Path) -> None:
    wheels = root / "opt" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    plat = ["--platform", "manylinux2014_aarch64", "--platform", "manylinux_2_28_aarch64"]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", *plat, "--python-version", "3.11",
         "--implementation", "cp", "--abi", "cp311", "--only-binary=:all:", "-d", str(wheels),
         *_versions()],
        check=True,
    )  # fmt: skip
    # pip runs on this side: the root has no CA bundle for a proxy, and emulated pip is slow.
    names = " ".join(f"/opt/wheels/{p.name}" for p in sorted(wheels.glob("*.whl")))
    subprocess.run(
        ["chroot", str(root), "/bin/sh", "-c",
         f"python3 -m venv /opt/venv && /opt/venv/bin/pip install -q --no-index {names}"],
        check=True,
    )  # fmt: skip


def _digest(cmd: list[str], timeout: float) -> dict[str, Any]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise ConfigError(f"bench edge-arm64: {' '.join(cmd[:3])} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def bench_edge_arm64(argv: list[str]) -> dict[str, Any]:
    """Digests of the decoder and kernels on x86_64 and on arm64 under qemu, and whether they agree."""
    ap = argparse.ArgumentParser(prog="carpulse bench edge-arm64", description=__doc__)
    data = shared_data_dir()
    ap.add_argument("--root", type=Path, default=Path("/var/tmp/arm64root"), help="arm64 root")
    ap.add_argument("--log", type=Path, default=data / DEFAULT_LOG, help="candump -L log")
    ap.add_argument("--dbc", type=Path, default=data / DEFAULT_DBC)
    ap.add_argument("--mapping", default="gt350", help='VSS mapping; "" decodes every signal')
    ap.add_argument("--setup", action="store_true", help="install the aarch64 wheels first")
    ap.add_argument("--timeout-s", type=float, default=3600)
    args = ap.parse_args(argv)
    if not (args.root / "usr" / "bin" / "python3").exists():
        raise ConfigError(f"bench edge-arm64: no arm64 root at {args.root} (see --help)")
    if args.setup:
        _setup(args.root)
    if not (args.root / "opt" / "venv" / "bin" / "python").exists():
        raise ConfigError(f"bench edge-arm64: {args.root} has no /opt/venv; run with --setup")
    for p in (args.log, args.dbc):
        if not p.exists():
            raise ConfigError(f"bench edge-arm64: {p} is missing (see ../shared/DATA.md)")
    inside = args.root / "opt" / "carpulse"
    shutil.rmtree(inside, ignore_errors=True)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, inside / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for p in (args.log, args.dbc):
        shutil.copyfile(p, inside / p.name)
    common = ["--mapping", args.mapping] if args.mapping else []  # "": every DBC signal
    here = _digest(
        [sys.executable, "-m", "edge.arch_digest", "--log", str(args.log), "--dbc", str(args.dbc),
         *common],
        args.timeout_s,
    )  # fmt: skip
    proc = args.root / "proc"
    mounted = not (proc / "cpuinfo").exists()  # numba reads /proc/cpuinfo
    if mounted:
        subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    try:
        arm = _digest(
            ["chroot", str(args.root), "/usr/bin/env", "PYTHONPATH=/opt/carpulse",
             "/opt/venv/bin/python", "-m", "edge.arch_digest", "--log",
             f"/opt/carpulse/{args.log.name}", "--dbc", f"/opt/carpulse/{args.dbc.name}",
             *common],
            args.timeout_s,
        )  # fmt: skip
    finally:
        if mounted:
            subprocess.run(["umount", str(proc)], check=False)
    differ = [k for k in COMPARED if here[k] != arm[k]]
    return {
        "identical": not differ and here["compiled"] and arm["compiled"],
        "differ": differ,
        "x86_64": here,
        "arm64": arm,
        "log": str(args.log),
    }
