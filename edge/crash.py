"""Crash detection on the edge: sudden stop from speed, high-g pulse or airbag deployment, glitch-guarded.

Public API (the agent loop uses only this)::

    from edge.crash import CrashConfig, CrashDetector

    det = CrashDetector(CrashConfig())            # thresholds below; state per vehicle slot
    for alarm in det.update(samples, slot=0):     # samples: core.wire.Samples, VSS-named
        queue.put(alarm.to_event(device_id, boot_id, seq.next()))   # Event kind "crash", priority 0
    det.stats                                     # counters: glitches, signal gaps, sensor faults...

Triggers (each guarded against sensor glitches):

* ``sudden_stop``: ``Vehicle.Speed`` was >= ``speed_high_kmh`` for ``confirm_n`` consecutive samples,
  then fell to <= ``speed_stop_kmh`` within ``stop_window_s`` and *stayed* there for ``confirm_n``
  samples and ``stop_hold_s``. Braking at 1 g needs ~2.8 s from 100 km/h, so a stop within 2 s is
  not braking. A single zero sample resets nothing; a gap in the speed signal longer than
  ``max_gap_s`` (loss of signal) forgets the "was fast" state, so a signal that comes back at 0
  after a dropout is not a crash.
* ``high_acceleration``: the magnitude of the fresh ``Vehicle.Acceleration.*`` components is
  >= ``accel_threshold_g`` at ``accel_confirm_n`` distinct timestamps in a row, as one pulse no
  longer than ``accel_max_pulse_s`` (crash pulses last ~50-200 ms; a value stuck high for
  seconds is a sensor fault, counted, not an alarm), after ``accel_warmup_n`` calm readings (the
  GT350's accelerometer sends its "not ready" code, 41.9 m/s^2 on every axis, for ~0.75 s at
  key-on). The magnitude is evaluated once per timestamp, after every component of that instant
  has arrived, so it trails the signal by one frame.
* ``airbag``: an airbag signal (``airbag_signals``, or any ``...Airbag.IsDeployed``) equals 1 for
  ``airbag_confirm_n`` samples in a row.

After an alarm the slot is quiet for ``refractory_s``: one crash gives one event. Each alarm carries
the last ``window_s`` seconds of the watched signals (and ``context_signals``) from a ring buffer.
Rows are processed by a numba kernel over the whole batch; Python only maps names and copies arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from core import kernel_flags
from core.jit import njit
from core.wire import Event, Samples

G = 9.80665
NONE = -(2**62)  # "no timestamp yet" (int64 sentinel far before any real time)

# Row kinds.
K_OTHER, K_SPEED, K_AX, K_AY, K_AZ, K_AIRBAG, K_CONTEXT = 0, 1, 2, 3, 4, 5, 6
# Trigger codes.
R_SUDDEN_STOP, R_ACCEL, R_AIRBAG = 1, 2, 3
REASON_NAMES = {R_SUDDEN_STOP: "sudden_stop", R_ACCEL: "high_acceleration", R_AIRBAG: "airbag"}

# Integer state per slot.
(
    S_LAST_SPEED_TS,
    S_HIGH_RUN,
    S_LAST_HIGH_TS,
    S_LOW_RUN,
    S_LOW_START_TS,
    S_LOW_FIRED,
    S_AX_TS,
    S_AY_TS,
    S_AZ_TS,
    S_ACC_PENDING_TS,
    S_ACC_RUN,
    S_ACC_START_TS,
    S_ACC_LAST_TS,
    S_ACC_IMPLAUSIBLE,
    S_BAG_RUN,
    S_QUIET_UNTIL,
    S_ACC_LAST_EVAL,
    S_ACC_CALM,
    S_ACC_WARM,
) = range(19)
N_SI = 19
# Float state per slot.
F_HIGH_SPEED, F_AX, F_AY, F_AZ, F_ACC_PEAK = range(5)
N_SF = 5
# Parameters.
(
    P_MAX_GAP,
    P_STOP_WINDOW,
    P_STOP_HOLD,
    P_CONFIRM,
    P_ACC_CONFIRM,
    P_ACC_PULSE,
    P_QUIET,
    P_BAG,
    P_ACC_WARMUP,
) = range(9)
PF_V_HIGH, PF_V_STOP, PF_ACC_THR, PF_ACC_MAX = range(4)
# Counters.
ST_NAN, ST_SPEED_GAP, ST_SPEED_GLITCH, ST_ACC_GLITCH, ST_ACC_FAULT, ST_BAG_GLITCH, ST_SUPPRESSED = (
    range(7)
)
STAT_NAMES = (
    "nan_values",
    "speed_signal_gaps",
    "speed_glitches",
    "accel_glitches",
    "accel_faults",
    "airbag_glitches",
    "suppressed",
)


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _end_pulse(si, sf, slot, pi, t, quiet, row, out_row, out_reason, out_a, out_b, n_out, stats):  # type: ignore[no-untyped-def]
    run = si[slot, S_ACC_RUN]
    duration = si[slot, S_ACC_LAST_TS] - si[slot, S_ACC_START_TS]
    si[slot, S_ACC_RUN] = 0
    if run < pi[P_ACC_CONFIRM]:
        stats[ST_ACC_GLITCH] += 1
        return n_out
    if duration > pi[P_ACC_PULSE] or si[slot, S_ACC_IMPLAUSIBLE] != 0 or si[slot, S_ACC_WARM] == 0:
        stats[ST_ACC_FAULT] += 1
        return n_out
    if quiet:
        stats[ST_SUPPRESSED] += 1
        return n_out
    out_row[n_out] = row
    out_reason[n_out] = R_ACCEL
    out_a[n_out] = sf[slot, F_ACC_PEAK] / 9.80665
    out_b[n_out] = duration / 1e6
    si[slot, S_QUIET_UNTIL] = t + pi[P_QUIET]
    return n_out + 1


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _crash_kernel(kind, ts, val, slot, si, sf, pi, pf, out_row, out_reason, out_a, out_b, stats):  # type: ignore[no-untyped-def]
    """Scan time-ordered rows of one slot; write alarms into ``out_*``; return how many."""
    n_out = 0
    max_gap = pi[P_MAX_GAP]
    for i in range(kind.shape[0]):
        k = kind[i]
        if k == K_OTHER or k == K_CONTEXT:  # noqa: SIM109 - plain compares compile best
            continue
        t = ts[i]
        v = val[i]
        if not np.isfinite(v):
            stats[ST_NAN] += 1
            continue
        quiet = t < si[slot, S_QUIET_UNTIL]
        if k == K_SPEED:
            last = si[slot, S_LAST_SPEED_TS]
            if last != NONE and t - last > max_gap:
                # Loss of signal: what happened meanwhile is unknown, so forget "was fast".
                stats[ST_SPEED_GAP] += 1
                si[slot, S_HIGH_RUN] = 0
                si[slot, S_LAST_HIGH_TS] = NONE
                si[slot, S_LOW_RUN] = 0
            si[slot, S_LAST_SPEED_TS] = t
            if v >= pf[PF_V_HIGH]:
                si[slot, S_HIGH_RUN] += 1
                if si[slot, S_HIGH_RUN] >= pi[P_CONFIRM]:
                    si[slot, S_LAST_HIGH_TS] = t
                    sf[slot, F_HIGH_SPEED] = v
            else:
                si[slot, S_HIGH_RUN] = 0
            if v <= pf[PF_V_STOP]:
                if si[slot, S_LOW_RUN] == 0:
                    si[slot, S_LOW_START_TS] = t
                    si[slot, S_LOW_FIRED] = 0
                si[slot, S_LOW_RUN] += 1
                high = si[slot, S_LAST_HIGH_TS]
                if (
                    si[slot, S_LOW_FIRED] == 0
                    and high != NONE
                    and si[slot, S_LOW_RUN] >= pi[P_CONFIRM]
                    and t - si[slot, S_LOW_START_TS] >= pi[P_STOP_HOLD]
                    and si[slot, S_LOW_START_TS] - high <= pi[P_STOP_WINDOW]
                ):
                    si[slot, S_LOW_FIRED] = 1
                    si[slot, S_LAST_HIGH_TS] = NONE
                    if quiet:
                        stats[ST_SUPPRESSED] += 1
                    else:
                        out_row[n_out] = i
                        out_reason[n_out] = R_SUDDEN_STOP
                        out_a[n_out] = sf[slot, F_HIGH_SPEED]
                        out_b[n_out] = (si[slot, S_LOW_START_TS] - high) / 1e6
                        n_out += 1
                        si[slot, S_QUIET_UNTIL] = t + pi[P_QUIET]
            else:
                if 0 < si[slot, S_LOW_RUN] < pi[P_CONFIRM]:
                    stats[ST_SPEED_GLITCH] += 1
                si[slot, S_LOW_RUN] = 0
        elif k == K_AIRBAG:
            if v == 1.0:
                si[slot, S_BAG_RUN] += 1
                if si[slot, S_BAG_RUN] == pi[P_BAG]:
                    if quiet:
                        stats[ST_SUPPRESSED] += 1
                    else:
                        out_row[n_out] = i
                        out_reason[n_out] = R_AIRBAG
                        out_a[n_out] = v
                        out_b[n_out] = 0.0
                        n_out += 1
                        si[slot, S_QUIET_UNTIL] = t + pi[P_QUIET]
            else:
                if 0 < si[slot, S_BAG_RUN] < pi[P_BAG]:
                    stats[ST_BAG_GLITCH] += 1
                si[slot, S_BAG_RUN] = 0
        else:  # an acceleration component
            pending = si[slot, S_ACC_PENDING_TS]
            if pending != NONE and t != pending:
                # Every component of instant ``pending`` has arrived: evaluate it now.
                last_eval = si[slot, S_ACC_LAST_EVAL]
                if last_eval != NONE and pending - last_eval > max_gap:
                    # Signal loss: close any pulse and start the warm-up again.
                    if si[slot, S_ACC_RUN] > 0:
                        n_out = _end_pulse(
                            si,
                            sf,
                            slot,
                            pi,
                            t,
                            quiet,
                            i,
                            out_row,
                            out_reason,
                            out_a,
                            out_b,
                            n_out,
                            stats,
                        )
                    si[slot, S_ACC_CALM] = 0
                si[slot, S_ACC_LAST_EVAL] = pending
                m2 = 0.0
                for c in range(3):
                    cts = si[slot, S_AX_TS + c]
                    if cts != NONE and pending - cts <= max_gap:
                        m2 += sf[slot, F_AX + c] * sf[slot, F_AX + c]
                mag = np.sqrt(m2)
                if mag >= pf[PF_ACC_THR]:
                    if si[slot, S_ACC_RUN] == 0:
                        si[slot, S_ACC_START_TS] = pending
                        si[slot, S_ACC_IMPLAUSIBLE] = 0
                        # A pulse right after the signal (re)starts is an ECU's "not ready" code,
                        # not a crash: it only counts after a calm warm-up.
                        si[slot, S_ACC_WARM] = 1 if si[slot, S_ACC_CALM] >= pi[P_ACC_WARMUP] else 0
                        sf[slot, F_ACC_PEAK] = 0.0
                    si[slot, S_ACC_RUN] += 1
                    si[slot, S_ACC_LAST_TS] = pending
                    si[slot, S_ACC_CALM] = 0
                    sf[slot, F_ACC_PEAK] = max(sf[slot, F_ACC_PEAK], mag)
                    if mag > pf[PF_ACC_MAX]:
                        si[slot, S_ACC_IMPLAUSIBLE] = 1
                else:
                    if si[slot, S_ACC_RUN] > 0:
                        n_out = _end_pulse(
                            si,
                            sf,
                            slot,
                            pi,
                            t,
                            quiet,
                            i,
                            out_row,
                            out_reason,
                            out_a,
                            out_b,
                            n_out,
                            stats,
                        )
                    si[slot, S_ACC_CALM] += 1
            c = k - K_AX
            sf[slot, F_AX + c] = v
            si[slot, S_AX_TS + c] = t
            si[slot, S_ACC_PENDING_TS] = t
    return n_out


@dataclass(frozen=True)
class CrashConfig:
    """Thresholds and signal names; the defaults follow the module docstring."""

    speed_signal: str = "Vehicle.Speed"  # km/h
    accel_signals: tuple[str, str, str] = (
        "Vehicle.Acceleration.Longitudinal",
        "Vehicle.Acceleration.Lateral",
        "Vehicle.Acceleration.Vertical",
    )  # m/s^2
    airbag_signals: tuple[str, ...] = ()  # 1 = deployed; names ending .Airbag.IsDeployed count too
    context_signals: tuple[str, ...] = ()  # kept in the ring buffer for the event, not watched
    speed_high_kmh: float = 100.0
    speed_stop_kmh: float = 5.0
    stop_window_s: float = 2.0
    stop_hold_s: float = 1.0
    confirm_n: int = 3
    accel_threshold_g: float = 4.0
    accel_confirm_n: int = 2
    accel_max_pulse_s: float = 0.5
    accel_max_plausible_g: float = 150.0
    accel_warmup_n: int = 10  # calm readings needed before a pulse counts (after start or a gap)
    airbag_confirm_n: int = 2
    max_gap_s: float = 0.5
    refractory_s: float = 30.0
    window_s: float = 10.0
    ring_rows: int = 32_768  # per slot; the window is cut short if the signals are faster


@dataclass(frozen=True)
class CrashAlarm:
    """One detected crash: what triggered it, when, and the data just before."""

    slot: int
    trigger: str
    ts_us: int
    detail: dict[str, float]
    window: Samples = field(repr=False)

    def to_event(self, device_id: str, boot_id: str, seq: int) -> Event:
        """The high-priority ``crash`` event sent to the cloud.

        The window is thinned evenly to at most ``MAX_EVENT_ROWS`` samples (the last one kept),
        so the event stays under the wire's event size cap (``core.wire.MAX_EVENT_BYTES``): a
        crash event the bridge refused as too large would be a crash nobody hears of.
        """
        w = self.window
        if len(w) > MAX_EVENT_ROWS:
            idx = np.unique(np.linspace(0, len(w) - 1, MAX_EVENT_ROWS).round().astype(np.int64))
            w = type(w)(w.names, w.sig[idx], w.ts_us[idx], w.value[idx])
        return Event(
            device_id=device_id,
            boot_id=boot_id,
            seq=seq,
            kind="crash",
            ts_us=self.ts_us,
            priority=0,
            data={
                "trigger": self.trigger,
                **self.detail,
                "window": {
                    "names": list(w.names),
                    "sig": w.sig.tolist(),
                    "ts_us": w.ts_us.tolist(),
                    "value": w.value.tolist(),
                },
            },
        )


#: samples of a crash event's window at most (about 19 bytes each on the wire: 38 KB)
MAX_EVENT_ROWS: Final = 2000


class CrashDetector:
    """Per-slot (vehicle) crash state; ``update`` takes whole ``Samples`` batches."""

    def __init__(self, cfg: CrashConfig | None = None, n_slots: int = 1) -> None:
        self.cfg = cfg = cfg or CrashConfig()
        us = 1_000_000
        self._pi = np.array(
            [
                int(cfg.max_gap_s * us),
                int(cfg.stop_window_s * us),
                int(cfg.stop_hold_s * us),
                cfg.confirm_n,
                cfg.accel_confirm_n,
                int(cfg.accel_max_pulse_s * us),
                int(cfg.refractory_s * us),
                cfg.airbag_confirm_n,
                cfg.accel_warmup_n,
            ],
            dtype=np.int64,
        )
        self._pf = np.array(
            [
                cfg.speed_high_kmh,
                cfg.speed_stop_kmh,
                cfg.accel_threshold_g * G,
                cfg.accel_max_plausible_g * G,
            ]
        )
        self._si = np.zeros((0, N_SI), np.int64)
        self._sf = np.zeros((0, N_SF), np.float64)
        self._stats = np.zeros(len(STAT_NAMES), np.int64)
        self._names: list[str] = []
        self._gid: dict[str, int] = {}
        self._kind_cache: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._rings: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._grow(n_slots)

    @property
    def stats(self) -> dict[str, int]:
        return dict(zip(STAT_NAMES, self._stats.tolist(), strict=True))

    def _grow(self, n_slots: int) -> None:
        have = self._si.shape[0]
        if n_slots <= have:
            return
        si = np.zeros((n_slots - have, N_SI), np.int64)
        for col in (
            S_LAST_SPEED_TS,
            S_LAST_HIGH_TS,
            S_AX_TS,
            S_AY_TS,
            S_AZ_TS,
            S_ACC_PENDING_TS,
            S_QUIET_UNTIL,
            S_ACC_LAST_EVAL,
        ):
            si[:, col] = NONE
        self._si = np.concatenate([self._si, si])
        self._sf = np.concatenate([self._sf, np.zeros((n_slots - have, N_SF))])
        empty = (np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.float64))
        self._rings += [empty] * (n_slots - have)

    def _kind_of(self, name: str) -> int:
        cfg = self.cfg
        if name == cfg.speed_signal:
            return K_SPEED
        if name in cfg.accel_signals:
            return K_AX + cfg.accel_signals.index(name)
        if name in cfg.airbag_signals or name.endswith(".Airbag.IsDeployed"):
            return K_AIRBAG
        if name in cfg.context_signals:
            return K_CONTEXT
        return K_OTHER

    def _tables(self, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Per-name kind and global name id (cached per name table: one Python loop per table)."""
        hit = self._kind_cache.get(names)
        if hit is None:
            kinds = np.array([self._kind_of(n) for n in names], dtype=np.int8)
            for n in names:
                if n not in self._gid:
                    self._gid[n] = len(self._names)
                    self._names.append(n)
            gids = np.array([self._gid[n] for n in names], np.int32)
            if len(self._kind_cache) > 256:  # sources with ever-changing name tables
                self._kind_cache.clear()
            hit = self._kind_cache[names] = (kinds, gids)
        return hit

    def update(self, samples: Samples, slot: int = 0) -> list[CrashAlarm]:
        """Feed one batch for vehicle ``slot``; return the alarms it raised (usually none)."""
        self._grow(slot + 1)
        if len(samples) == 0:
            return []
        kinds_by_name, gids_by_name = self._tables(samples.names)
        kind = kinds_by_name[samples.sig]
        keep = np.flatnonzero(kind != K_OTHER)
        if len(keep) == 0:
            return []
        ts = samples.ts_us[keep]
        if len(ts) > 1 and np.any(np.diff(ts) < 0):
            keep = keep[np.argsort(ts, kind="stable")]
            ts = samples.ts_us[keep]
        kind = kind[keep]
        val = samples.value[keep]
        gid = gids_by_name[samples.sig[keep]]
        n = len(keep)
        out_row = np.empty(n, np.int64)
        out_reason = np.empty(n, np.int8)
        out_a = np.empty(n, np.float64)
        out_b = np.empty(n, np.float64)
        n_out = _crash_kernel(
            kind,
            ts,
            val,
            slot,
            self._si,
            self._sf,
            self._pi,
            self._pf,
            out_row,
            out_reason,
            out_a,
            out_b,
            self._stats,
        )
        ring = self._rings[slot]
        alarms = [
            self._alarm(
                slot,
                int(out_reason[j]),
                int(ts[out_row[j]]),
                float(out_a[j]),
                float(out_b[j]),
                ring,
                (gid[: out_row[j] + 1], ts[: out_row[j] + 1], val[: out_row[j] + 1]),
            )
            for j in range(n_out)
        ]
        self._rings[slot] = self._trim(ring, (gid, ts, val))
        return alarms

    def _trim(
        self,
        ring: tuple[np.ndarray, np.ndarray, np.ndarray],
        new: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g, t, v = (np.concatenate([a, b]) for a, b in zip(ring, new, strict=True))
        start = max(0, len(t) - self.cfg.ring_rows)
        if len(t):
            start = max(start, int(np.searchsorted(t, t[-1] - int(self.cfg.window_s * 1e6))))
        return g[start:], t[start:], v[start:]

    def _alarm(
        self,
        slot: int,
        reason: int,
        ts_us: int,
        a: float,
        b: float,
        ring: tuple[np.ndarray, np.ndarray, np.ndarray],
        upto: tuple[np.ndarray, np.ndarray, np.ndarray],
    ) -> CrashAlarm:
        g, t, v = self._trim(ring, upto)
        window = Samples(tuple(self._names), g, t, v).compact()
        if reason == R_SUDDEN_STOP:
            detail = {"speed_before_kmh": round(a, 2), "stop_within_s": round(b, 3)}
        elif reason == R_ACCEL:
            detail = {"peak_g": round(a, 2), "pulse_s": round(b, 3)}
        else:
            detail = {"airbag_value": a}
        return CrashAlarm(slot, REASON_NAMES[reason], ts_us, detail, window)


def describe(alarm: CrashAlarm) -> dict[str, Any]:
    """A short JSON-able summary (logs, tools)."""
    return {
        "trigger": alarm.trigger,
        "ts_us": alarm.ts_us,
        **alarm.detail,
        "rows": len(alarm.window),
    }
