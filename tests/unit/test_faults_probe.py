"""The accounting of ``carpulse eval faults`` without a stack: queue journal, source, compare."""

from __future__ import annotations

import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from carpulse.faults_probe import Tally, accepted_samples, compare, source_samples, watch_queue
from core.wire import Samples, TelemetryBatch, encode_telemetry
from edge.queue import DurableQueue
from edge.sources.tick import tick_names, tick_value


def batch(seq: int, k0: int, k1: int) -> tuple[bytes, int]:
    k = np.repeat(np.arange(k0, k1 + 1), 2)
    sig = np.tile(np.arange(2), k1 - k0 + 1)
    s = Samples.from_columns(tick_names(2), sig, k * 1000 + sig, tick_value(k, sig))
    return encode_telemetry(TelemetryBatch("car", "b1", seq, s)), len(sig)


def test_accepted_rows_stay_known_after_their_puback(tmp_path: Path) -> None:
    path = tmp_path / "car.queue.sqlite"
    watch_queue(path)
    q = DurableQueue(path)  # the agent opens the file the evaluation prepared
    ids = []
    for seq, (k0, k1) in enumerate([(10, 14), (15, 19)]):
        payload, n = batch(seq, k0, k1)
        ids.append(q.put("telemetry", "t", payload, priority=5, boot_id="b1", seq=seq, samples=n))
    q.put("events", "e", b"not telemetry", priority=0, boot_id="b1", seq=9)
    assert ids == sorted(ids) and len(q) == 3  # row ids are the queue's own, not the trigger's
    q.ack([r.id for r in q.take(10, set())])
    q.close()
    acc = accepted_samples(path)
    assert len(acc) == 20 and acc[("Vehicle.Eval.Tick1", 12_001)] == 12.125


def test_compare_counts_window_lost_and_unexpected(tmp_path: Path) -> None:
    journal = tmp_path / "ticks"
    journal.write_text("10 14\n15 19\n")
    src = source_samples(journal, 2, 1000)
    assert len(src) == 20
    accepted = {k: v for k, v in src.items() if k[1] < 18_000}  # ticks 18, 19 died in memory
    stored = dict(accepted)
    del stored[("Vehicle.Eval.Tick0", 11_000)]  # one accepted sample missing
    stored[("Vehicle.Eval.Tick1", 12_001)] = -1.0  # one stored with a wrong value
    stored[("Vehicle.Eval.Tick0", 99_000)] = 1.0  # one no source produced
    t = compare(src, accepted, stored, "car")
    assert (t.source, t.accepted, t.window) == (20, 16, 4)
    assert (t.stored, t.lost, t.unexpected) == (14, 2, 1)
    assert t.lost_examples == ["car Vehicle.Eval.Tick0 11000", "car Vehicle.Eval.Tick1 12001"]
    # every lost sample, for the eval's look into Kafka (kafka.lost_in_kafka)
    assert sorted(t.missing) == [
        ("car", "Vehicle.Eval.Tick0", 11000),
        ("car", "Vehicle.Eval.Tick1", 12001),
    ]
    both = Tally()
    both.add(t)
    both.add(t)
    assert len(both.missing) == 4 and both.lost == 4


def test_write_counter_carries_over_an_influx_restart() -> None:
    from carpulse.faults_probe import WriteCounter

    values = iter([100, 150, 400, 30, 50])  # restarted before 400; unnoticed drop before 30

    class Fake:
        def points_written(self) -> int:
            return next(values)

    w = WriteCounter(Fake())  # type: ignore[arg-type]
    assert w.read() == 100
    w.before_restart()  # reads 150
    assert w.read() == 550  # the backlog (400) exceeds the old count: still carried over
    assert w.read() == 580 and w.read() == 600


def test_vehicles_cover_every_kafka_partition() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    from carpulse.evals.faults import device_ids

    ids = device_ids("fx-wk-", 6, 4)
    parts = [DefaultPartitioner()(d.encode(), [0, 1, 2, 3], [0, 1, 2, 3]) for d in ids]
    assert parts == [0, 1, 2, 3, 0, 1] and len(set(ids)) == 6


def test_kernels_dir_without_a_current_build_is_refused_before_any_stack(tmp_path: Path) -> None:
    from carpulse.evals.faults import main

    (tmp_path / "carpulse_aot_kernels.json").write_text('{"digest": "stale", "file": "x.so"}')
    with pytest.raises(SystemExit) as exc:
        main(["--kernels-dir", str(tmp_path), "--keep", str(tmp_path / "run")])
    assert exc.value.code == 2
    assert not (tmp_path / "run").exists()  # refused before a stack was made


def test_a_vehicle_given_a_build_runs_it_not_numba(tmp_path: Path) -> None:
    from carpulse.faults_rig import Vehicle

    config = tmp_path / "stack.toml"
    config.write_text('[edge]\nstate_dir = "/elsewhere"\n')
    rig = SimpleNamespace(root=tmp_path, logs=tmp_path, stack=SimpleNamespace(config_file=config))
    kdir = tmp_path / "kernels dir"
    aot = Vehicle(rig, "fx-1", signals=2, hz=10, batch_s=0.5, kernels_dir=kdir)  # type: ignore[arg-type]
    jit = Vehicle(rig, "fx-2", signals=2, hz=10, batch_s=0.5)  # type: ignore[arg-type]
    got = tomllib.loads(aot.config.read_text())["edge"]
    assert got["aot_dir"] == str(kdir) and got["state_dir"] == str(tmp_path / "edge" / "fx-1")
    assert "aot_dir" not in tomllib.loads(jit.config.read_text())["edge"]


def _state(pid: int) -> str:
    """A process's state letter in /proc (``T``: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_writers_are_paused_while_the_write_count_is_read_and_go_on_after() -> None:
    import subprocess
    import sys

    from carpulse.faults_rig import Rig

    names = ("worker-a", "worker-b", "crm", "bridge-a")
    procs = {
        n: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for n in names
    }
    rig = SimpleNamespace(procs=procs)
    try:
        states: dict[str, str] = {}
        paused = Rig.writers_paused(rig, settle_s=0.05)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError, match="InfluxDB"), paused:
            states.update({n: _state(p.pid) for n, p in procs.items()})
            raise RuntimeError("InfluxDB did not stop")
        # the stream and CRM workers (InfluxDB's writers) were stopped; a bridge was not
        assert states == {"worker-a": "T", "worker-b": "T", "crm": "T", "bridge-a": "S"}
        # and every one runs again, even though the block failed
        assert all(_state(p.pid) in "SR" for p in procs.values())
    finally:
        for p in procs.values():
            p.kill()
            p.wait(10)
