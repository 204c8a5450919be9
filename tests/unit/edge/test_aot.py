"""Kernels compiled ahead of time: build, digest, fallback, argument checks, parity with numba's JIT
on a real log, and an agent that never imports numba."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from carpulse.bench.edge import DEFAULT_DBC, DEFAULT_LOG
from core import jit
from core.datasets import shared_data_dir
from core.jit import MANIFEST, kernel_digest, source_files, use_aot
from edge.aot import AOT_KERNELS, build_kernels, toolchain_problem
from models.ids.attacks import ATTACKS

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = "tests.unit.edge.aot_sample_kernels"
SAMPLE_KERNELS = ((SAMPLE, "_scaled_sum", "float64(float64[::1], float64[::1])"),)
NO_BUILD = toolchain_problem() or (
    "NUMBA_DISABLE_JIT=1: nothing to compile"
    if os.environ.get("NUMBA_DISABLE_JIT") == "1"
    else None
)
needs_build = pytest.mark.skipif(NO_BUILD is not None, reason=str(NO_BUILD))


def _data() -> tuple[Path, Path]:
    log, dbc = shared_data_dir() / DEFAULT_LOG, shared_data_dir() / DEFAULT_DBC
    if not (log.exists() and dbc.exists()):
        pytest.skip("real CAN logs not here (../shared/DATA.md)")
    return log, dbc


@pytest.fixture
def fresh_jit(monkeypatch: pytest.MonkeyPatch) -> object:
    """``core.jit`` without a loaded build, and the sample module not imported, before and after."""
    monkeypatch.setattr(jit, "_loaded", None)
    monkeypatch.setattr(jit, "_aot_modules", frozenset())
    sys.modules.pop(SAMPLE, None)
    yield None
    sys.modules.pop(SAMPLE, None)


@pytest.fixture(scope="module")
def sample_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if NO_BUILD:
        pytest.skip(NO_BUILD)
    out = tmp_path_factory.mktemp("aot-sample")
    summary = build_kernels(out, SAMPLE_KERNELS)
    sys.modules.pop(SAMPLE, None)  # imported (with numba) to build: tests import it afresh
    assert summary["kernels"] == [f"{SAMPLE}._scaled_sum"]
    return out


@pytest.fixture(scope="module")
def agent_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if NO_BUILD:
        pytest.skip(NO_BUILD)
    out = tmp_path_factory.mktemp("aot-agent")
    cmd = [sys.executable, "-m", "carpulse", "edge", "build-kernels", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(2):  # the second run finds the build current and keeps it
        got = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert got.returncode == 0, got.stderr[-2000:]
    summary = json.loads(got.stdout.splitlines()[-1])
    assert summary["up_to_date"] is True, summary
    assert summary["kernels"] == sorted(f"{m}.{f}" for m, f, _ in AOT_KERNELS)
    return out


# ----- build, load, check ------------------------------------------------------------------------
@needs_build
def test_a_built_kernel_loads_without_numba_and_computes_what_python_does(
    sample_build: Path, fresh_jit: object
) -> None:
    assert build_kernels(sample_build, SAMPLE_KERNELS, force=False)["up_to_date"] is True
    ok, line = use_aot(sample_build, SAMPLE_KERNELS)
    assert ok and "1 loaded ahead of time" in line, line
    assert jit.aot_active()
    mod = importlib.import_module(SAMPLE)
    assert not hasattr(mod._scaled_sum, "signatures")  # the compiled function, not a dispatcher
    assert not hasattr(mod._helper, "signatures")  # a helper compiled into it stays plain Python
    values = np.array([1.0, 2.5, np.nan, -4.0, 1e300])
    out = np.zeros(5)
    total = mod._scaled_sum(values, out)
    assert np.array_equal(out, values * 3, equal_nan=True)
    assert total == 3.0 + 7.5 - 12.0 + 3e300


@needs_build
def test_arguments_that_do_not_match_the_build_are_refused(
    sample_build: Path, fresh_jit: object
) -> None:
    assert use_aot(sample_build, SAMPLE_KERNELS)[0]
    fn = importlib.import_module(SAMPLE)._scaled_sum
    good = np.ones(4)
    readonly = np.ones(4)
    readonly.flags.writeable = False
    bad = [
        (np.ones(4, np.float32), np.ones(4)),  # dtype
        (np.ones((2, 2)), np.ones(4)),  # ndim
        (np.ones(8)[::2], np.ones(4)),  # not contiguous: the build reads it as contiguous
        (good, readonly),  # the kernel writes into it
        (list(good), good),  # not an array
        (good,),  # count
    ]
    for args in bad:
        with pytest.raises(TypeError, match="_scaled_sum"):
            fn(*args)
    with pytest.raises(TypeError, match="read-only 1-d float64 array, the AOT build takes a "):
        fn(good, readonly)
    assert fn(good, np.zeros(4)) == 12.0


def test_without_a_build_numba_compiles_the_kernels(tmp_path: Path, fresh_jit: object) -> None:
    ok, line = use_aot(tmp_path / "nothing-here", SAMPLE_KERNELS)
    assert not ok and "no ahead-of-time build" in line and "build-kernels" in line
    mod = importlib.import_module(SAMPLE)
    out = np.zeros(2)
    assert mod._scaled_sum(np.array([1.0, 2.0]), out) == 9.0
    if os.environ.get("NUMBA_DISABLE_JIT") != "1":
        assert mod._scaled_sum.signatures  # numba's dispatcher compiled it


@needs_build
def test_a_stale_build_is_never_used(
    sample_build: Path, fresh_jit: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_sig = ((SAMPLE, "_scaled_sum", "float64(float64[:], float64[::1])"),)
    ok, line = use_aot(sample_build, other_sig)
    assert not ok and "stale" in line and "build-kernels" in line, line
    real = jit._version
    monkeypatch.setattr(jit, "_version", lambda d: "0.0.1" if d == "numba" else real(d))
    ok, line = use_aot(sample_build, SAMPLE_KERNELS)  # another numba than the build's
    assert not ok and "stale" in line, line
    assert not jit.aot_active()


def test_the_digest_follows_the_sources_and_the_modules_they_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = {p.name for p in source_files(["firmware_bridge.decode_kernel"])}
    assert {"decode_kernel.py", "dbc_plan.py", "jit.py"} <= names  # dbc_plan's constants
    assert "kernel_flags.py" in {p.name for p in source_files(["edge.crash"])}  # core flags
    mod = tmp_path / "aot_tmp_kernel.py"
    mod.write_text("from core.jit import njit\nK = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    kernels = (("aot_tmp_kernel", "f", "int64(int64)"),)
    first = kernel_digest(kernels)
    assert kernel_digest(kernels) == first
    mod.write_text("from core.jit import njit\nK = 2\n")
    assert kernel_digest(kernels) != first


@needs_build
def test_a_hostile_or_broken_manifest_means_no_build(
    sample_build: Path, fresh_jit: object, tmp_path: Path
) -> None:
    d = tmp_path / "k"
    shutil.copytree(sample_build, d)
    good = json.loads((d / MANIFEST).read_text())
    (d / MANIFEST).write_text("{not json")
    ok, line = use_aot(d, SAMPLE_KERNELS)
    assert not ok and "unreadable" in line
    for change, why in (
        ({"file": "../carpulse_aot_kernels.so"}, "bad file name"),
        ({"file": "carpulse_aot_kernels.missing.so"}, "fails to load"),
        ({"kernels": {}}, "kernel list differs"),
    ):
        (d / MANIFEST).write_text(json.dumps(good | change))
        ok, line = use_aot(d, SAMPLE_KERNELS)
        assert not ok and "fails to load" in line and why in line, line
    (d / MANIFEST).write_text(json.dumps(good))
    (d / good["file"]).chmod(0o777)  # anyone could replace the code the agent would run
    ok, line = use_aot(d, SAMPLE_KERNELS)
    assert not ok and "writable by every user" in line, line
    assert not jit.aot_active()
    (d / good["file"]).chmod(0o755)
    assert use_aot(d, SAMPLE_KERNELS)[0]  # the same build, once only its owner can write it


def test_use_aot_refuses_kernels_already_imported(fresh_jit: object, tmp_path: Path) -> None:
    importlib.import_module(SAMPLE)
    with pytest.raises(RuntimeError, match="before the kernels are imported"):
        use_aot(tmp_path, SAMPLE_KERNELS)


# ----- the agent's kernels on a real log ---------------------------------------------------------
@pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="JIT disabled")
def test_the_registry_signatures_are_those_the_jit_compiles_on_a_real_log(
    fresh_jit: object,
) -> None:
    from numba.core import sigutils

    log, dbc = _data()
    exec(compile(PARITY, "parity", "exec"), {"LOG": str(log), "DBC": str(dbc), "AOT": ""})
    for module, name, sig in AOT_KERNELS:
        kernel = getattr(importlib.import_module(module), name)
        args, _ = sigutils.normalize_signature(sig)
        assert tuple(args) in kernel.signatures, (module, name, kernel.signatures)


# Decodes the log as the agent does (4,096-frame blocks), feeds the campaign kernels and the crash
# detector, runs the CAN intrusion detector (a profile learned on the log's first half, then the
# whole log clean and with each attack injected), and prints SHA-256 digests of every output and
# state array, and the numba modules loaded.
PARITY = """
import hashlib, json, sys
from pathlib import Path
import numpy as np
if AOT:
    from core.jit import use_aot
    from edge.aot import AOT_KERNELS
    assert use_aot(Path(AOT), AOT_KERNELS)[0]
from edge.campaign_kernels import grow_state, on_change_state, on_change_update, periodic_state, periodic_update
from edge.crash import CrashConfig, CrashDetector
from edge.sources.can import FrameDecoder
from firmware_bridge.frames import read_candump
from models.ids.attacks import ATTACKS, inject
from models.ids.detector import CanIds, CanIdsProfile

frames, _ = read_candump(Path(LOG))
dec = FrameDecoder(Path(DBC), "gt350", strict=False, only_mapped=None)
det = CrashDetector(CrashConfig(accel_threshold_g=0.9))  # this log: parked, so 1 g (gravity) it is
per, chg = periodic_state(0), on_change_state(0)
h = {k: hashlib.sha256() for k in ("decoded", "periodic", "on_change", "crash")}
n = 0
for start in range(0, len(frames), 4096):
    s = dec.decode(frames.slice(start, start + 4096))
    for a in (s.sig, s.ts_us, s.value):
        h["decoded"].update(a.tobytes())
    n += len(s)
    grow_state(per, len(s.names)); grow_state(chg, len(s.names))
    slot_of = np.arange(len(s.names), dtype=np.int32)
    for a in periodic_update(slot_of, s.sig, s.ts_us, s.value, 100_000, per):
        h["periodic"].update(a.tobytes())
    h["on_change"].update(on_change_update(slot_of, s.sig, s.value, 0.5, chg).tobytes())
    for alarm in det.update(s):
        h["crash"].update(repr(alarm).encode())
for a in (det._si, det._sf, det._stats):
    h["crash"].update(a.tobytes())
h.update({k: hashlib.sha256() for k in ("ids_profile", "ids_flags", "ids_state")})
prof = CanIdsProfile.fit([frames.slice(0, len(frames) // 2)])  # _slots and _score, learning
for f in prof.__dataclass_fields__:
    h["ids_profile"].update(getattr(prof, f).tobytes())
t0 = int(frames.ts_us[len(frames) * 3 // 4])
flagged = {}
for seed, kind in enumerate(("clean",) + ATTACKS):
    got = inject(frames, kind, t0, t0 + 2_000_000, np.random.default_rng(seed)) if seed else None
    replay, ids = got[0] if got else frames, CanIds(prof)
    flagged[kind] = 0
    for start in range(0, len(replay), 4096):
        flags = ids.score(replay.slice(start, start + 4096))
        h["ids_flags"].update(flags.tobytes())
        flagged[kind] += int(np.count_nonzero(flags))
    for a in (ids.last_ts, ids.count, ids.count_ts):
        h["ids_state"].update(a.tobytes())
out = {k: v.hexdigest() for k, v in h.items()}
out["samples"] = n
out["crash_stats"] = det.stats
out["ids_flagged"] = flagged
out["numba"] = sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "llvmlite"))
print(json.dumps(out))
"""


def _parity(aot: Path | None) -> dict[str, object]:
    log, dbc = _data()
    code = f"LOG, DBC, AOT = {str(log)!r}, {str(dbc)!r}, {str(aot or '')!r}\n" + PARITY
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    got = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert got.returncode == 0, got.stderr[-2000:]
    return json.loads(got.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@needs_build
@pytest.mark.slow
def test_aot_outputs_equal_the_jit_outputs_bit_for_bit_on_a_real_log(agent_build: Path) -> None:
    aot, jitted = _parity(agent_build), _parity(None)
    assert aot["numba"] == [] and "numba" in jitted["numba"]
    assert jitted["samples"] > 10_000
    assert sum(jitted["crash_stats"].values()) > 0, jitted  # type: ignore[attr-defined]
    # the intrusion detector: nothing flagged on the clean log, every attack seen
    flagged: dict[str, int] = jitted["ids_flagged"]  # type: ignore[assignment]
    assert flagged["clean"] == 0 and all(flagged[k] > 0 for k in ATTACKS), flagged
    for key in (
        "decoded", "periodic", "on_change", "crash", "samples", "crash_stats",
        "ids_profile", "ids_flags", "ids_state", "ids_flagged",
    ):  # fmt: skip
        assert aot[key] == jitted[key], key


RUN_AGENT = """
import json, sys
from carpulse.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print("NUMBA=" + json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("numba", "llvmlite"))))
"""


def _run_agent(
    tmp_path: Path, name: str, kernels: Path, intrusion: bool = False
) -> tuple[dict[str, object], str, list[str]]:
    """``carpulse edge run`` for 3 s on a real log, offline (store and forward; no broker).

    ``intrusion``: with ``[edge.intrusion]`` on (a profile of the clean log from ``carpulse ids
    learn``), replaying that log with a 2 s DoS injected by ``carpulse ids inject``.
    """
    from carpulse.pki import LocalPKI

    log, dbc = _data()
    tables = ""
    if intrusion:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        profile, attacked = tmp_path / "gt350.ids.json", tmp_path / "dos.log"
        for args in (
            ["learn", str(log), "--model", "gt350", "--out", str(profile)],
            ["inject", str(log), "--out", str(attacked), "--attack", "dos"],
        ):
            got = subprocess.run(
                [sys.executable, "-m", "carpulse", "ids", *args],
                env=env, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert got.returncode == 0, got.stderr[-2000:]
        log = attacked
        tables = f'[edge.intrusion]\nenabled = true\nprofile = "{profile}"\n'
    if not (tmp_path / "pki").exists():
        LocalPKI(tmp_path / "pki").init()
    state = tmp_path / name
    cfg = tmp_path / f"{name}.toml"
    cfg.write_text(
        f'[stack]\ndata_dir = "{tmp_path}"\n'
        f'[edge]\ndevice_id = "aot-{name}"\nstate_dir = "{state}"\nbroker_port = 9\n'
        f'aot_dir = "{kernels}"\nstats_file = "{state / "stats.json"}"\n'
        f'[[edge.sources]]\ntype = "can"\nlog = "{log}"\ndbc = "{dbc}"\nmapping = "gt350"\n'
        'rate = "max"\n' + tables
    )
    got = subprocess.run(
        [sys.executable, "-c", RUN_AGENT, "edge", "run", "--config", str(cfg), "--seconds", "3"],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert got.returncode == 0, got.stderr[-2000:]
    numba = json.loads(got.stdout.split("NUMBA=")[1])
    return json.loads((state / "stats.json").read_text()), got.stderr, numba


@needs_build
@pytest.mark.slow
@pytest.mark.serial  # the agent runs 3 s: it must have a core to itself
def test_the_agent_runs_the_build_and_never_imports_numba(
    agent_build: Path, tmp_path: Path
) -> None:
    # [edge.intrusion] on: the detector's kernels come from the build too
    stats, err, numba = _run_agent(tmp_path, "aot", agent_build, intrusion=True)
    loaded = f"{len(AOT_KERNELS)} loaded ahead of time"
    assert stats["kernels"] == "aot" and loaded in err, err[-2000:]
    assert numba == [], numba
    assert int(stats["samples_in"]) > 1000 and int(stats["batches"]) > 0, stats  # type: ignore[call-overload]
    ids: dict[str, int] = stats["intrusion"]  # type: ignore[assignment]
    # every frame scored; the injected DoS (6,667 frames of id 0x000) flagged and reported
    assert ids["frames"] > 10_000 and ids["flagged"] >= 6667 and ids["events"] >= 1, ids


@needs_build
@pytest.mark.slow
@pytest.mark.serial  # the agent runs 3 s: it must have a core to itself
def test_a_stale_build_falls_back_to_the_jit_with_one_line(
    agent_build: Path, tmp_path: Path
) -> None:
    stale = tmp_path / "stale"
    shutil.copytree(agent_build, stale)
    doc = json.loads((stale / MANIFEST).read_text())
    (stale / MANIFEST).write_text(json.dumps(doc | {"digest": "0" * 64}))
    stats, err, numba = _run_agent(tmp_path, "stale", stale)
    assert stats["kernels"] == "jit" and "numba" in numba
    aot_lines = [ln for ln in err.splitlines() if "edge.aot:" in ln]
    assert len(aot_lines) == 1 and "is stale" in aot_lines[0], err[-2000:]
    assert int(stats["samples_in"]) > 1000, stats  # type: ignore[call-overload]
