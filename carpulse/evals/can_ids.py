"""``carpulse eval can-ids``: inject DoS, fuzzing, spoofing and replay into real CAN logs and score the IDS."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.datasets import canlog_dir
from core.errors import ConfigError
from core.frames import Frames
from firmware_bridge.frames import read_candump
from models.ids.attacks import ATTACKS, inject
from models.ids.detector import REASONS, CanIds, CanIdsProfile

log = logging.getLogger(__name__)

MIN_FRAMES = 200  # shorter logs say nothing about timing
# Some loggers buffer frames and stamp a batch at once: same-id gaps under 0.5 ms then make up
# several % of all gaps. Such logs carry no timing to learn or test, so they are left out (named).
BATCHED_GAP_US = 500
MAX_BATCHED_SHARE = 0.01


def batched_share(frames: Frames) -> float:
    """Share of same-id inter-arrival gaps shorter than ``BATCHED_GAP_US``."""
    order = np.lexsort((frames.ts_us, frames.can_id))
    same = frames.can_id[order][1:] == frames.can_id[order][:-1]
    gaps = np.diff(frames.ts_us[order])[same]
    return float(np.mean(gaps < BATCHED_GAP_US)) if len(gaps) else 0.0


def load_cars(root: Path) -> tuple[dict[str, list[Frames]], list[str]]:
    """Every car folder's logs as time-ordered ``Frames``; logs that cannot be used are named."""
    cars: dict[str, list[Frames]] = {}
    skipped: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.log")):
            frames, _rep = read_candump(path)
            if len(frames) < MIN_FRAMES:
                skipped.append(f"{folder.name}/{path.name}: {len(frames)} frames")
            elif np.any(np.diff(frames.ts_us) < 0):
                skipped.append(
                    f"{folder.name}/{path.name}: timestamps go backwards (an edited log)"
                )
            elif (share := batched_share(frames)) > MAX_BATCHED_SHARE:
                skipped.append(
                    f"{folder.name}/{path.name}: {share:.1%} of same-id gaps < 0.5 ms (batched stamps)"
                )
            else:
                cars.setdefault(folder.name, []).append(frames)
    return cars, skipped


def split(frames: Frames, train_share: float) -> tuple[Frames, Frames]:
    t0, t1 = int(frames.ts_us[0]), int(frames.ts_us[-1])
    cut = int(np.searchsorted(frames.ts_us, t0 + train_share * (t1 - t0)))
    return frames.slice(0, cut), frames.slice(cut, len(frames))


def _windows(ts: np.ndarray, t0: int, width_us: int, values: np.ndarray) -> np.ndarray:
    """Per window of ``width_us`` from ``t0``: does any frame in it have a non-zero value?"""
    w = (ts - t0) // width_us
    out = np.zeros(int(w[-1]) + 1 if len(w) else 0, dtype=bool)
    out[w[values > 0]] = True
    return out


class Tally:
    def __init__(self) -> None:
        self.tp = self.fp = self.fn = self.tn = 0

    def add(self, truth: np.ndarray, pred: np.ndarray) -> None:
        t, p = truth.astype(bool), pred.astype(bool)
        self.tp += int(np.sum(t & p))
        self.fp += int(np.sum(~t & p))
        self.fn += int(np.sum(t & ~p))
        self.tn += int(np.sum(~t & ~p))

    def figures(self) -> dict[str, float | int]:
        prec = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        rec = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        return {
            "precision": round(prec, 4),
            "recall": round(rec, 4),
            "f1": round(f1, 4),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }


def evaluate(
    root: Path,
    seed: int,
    train_share: float,
    window_ms: float,
    attack_s: float,
    min_flips: int = 32,
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    cars, skipped = load_cars(root)
    if not cars:
        raise ConfigError(f"no usable candump logs under {root} (expected <car>/*.log)")
    width = int(window_ms * 1000)
    win = {a: Tally() for a in ATTACKS}
    frame = {a: Tally() for a in ATTACKS}
    clean_frames = clean_flagged = clean_windows = clean_windows_flagged = 0
    reasons = dict.fromkeys(REASONS.values(), 0)
    segments = {a: 0 for a in ATTACKS}
    examples: list[dict[str, Any]] = []
    for car, logs in cars.items():
        parts = [split(f, train_share) for f in logs]
        profile = CanIdsProfile.fit([tr for tr, _ in parts])
        det = CanIds(profile, min_flips=min_flips)
        for _tr, test in parts:
            if len(test) < MIN_FRAMES // 2:
                continue
            det.reset()
            flags = det.score(test)
            clean_frames += len(test)
            clean_flagged += int(np.count_nonzero(flags))
            for bit, name in REASONS.items():
                reasons[name] += int(np.count_nonzero(flags & bit))
            cw = _windows(test.ts_us, int(test.ts_us[0]), width, flags)
            clean_windows += len(cw)
            clean_windows_flagged += int(cw.sum())
            t0, t1 = int(test.ts_us[0]), int(test.ts_us[-1])
            dur = min(int(attack_s * 1e6), (t1 - t0) // 2)
            for kind in ATTACKS:
                start = int(rng.integers(t0 + (t1 - t0) // 4, t1 - dur + 1))
                got = inject(test, kind, start, start + dur, rng)
                if got is None:
                    continue
                merged, label, info = got
                det.reset()
                f = det.score(merged)
                frame[kind].add(label, f > 0)
                # attacked windows: those overlapping the span of the injected frames
                inj = merged.ts_us[label > 0]
                truth = _windows(
                    merged.ts_us, t0, width, (merged.ts_us >= inj[0]) & (merged.ts_us <= inj[-1])
                )
                pred = _windows(merged.ts_us, t0, width, f)
                win[kind].add(truth, pred)
                segments[kind] += 1
                if len(examples) < 8 and kind in ("spoofing", "replay"):
                    examples.append({"car": car, "attack": kind, **info})
    speed = _speed(cars, train_share, min_flips)
    per_attack: dict[str, dict[str, Any]] = {
        a: {"window": win[a].figures(), "frame": frame[a].figures(), "segments": segments[a]}
        for a in ATTACKS
    }
    return {
        "f1": {a: per_attack[a]["window"]["f1"] for a in ATTACKS},
        "false_alarm_rate": round(clean_flagged / max(clean_frames, 1), 6),
        "false_alarm_rate_windows": round(clean_windows_flagged / max(clean_windows, 1), 6),
        "level": f"window ({window_ms:g} ms; a window is attacked if it overlaps the span of the "
        "injected frames); "
        "frame-level figures under per_attack.*.frame; false_alarm_rate is per clean frame",
        "per_attack": per_attack,
        "clean_frames": clean_frames,
        "clean_windows": clean_windows,
        "clean_flags_by_reason": reasons,
        "cars": sorted(cars),
        "logs": sum(len(v) for v in cars.values()),
        "skipped_logs": skipped,
        "protocol": f"per car: learn on the first {train_share:.0%} of each log, test on the rest; "
        f"one attack of each kind ({attack_s:g} s at most) injected into each test segment, seed {seed}",
        "targets": examples,
        "score_frames_per_s": speed,
    }


def _speed(cars: dict[str, list[Frames]], train_share: float, min_flips: int) -> float:
    """Median scoring speed (frames/s, one core) over every car's test segments, 5 runs."""
    from carpulse.bench import median_of

    jobs = []
    for logs in cars.values():
        parts = [split(f, train_share) for f in logs]
        jobs.append((CanIds(CanIdsProfile.fit([tr for tr, _ in parts]), min_flips), parts))
    n = sum(len(te) for _, parts in jobs for _tr, te in parts)

    def once() -> float:
        t0 = time.perf_counter()
        for det, parts in jobs:
            for _tr, te in parts:
                det.reset()
                det.score(te)
        return time.perf_counter() - t0

    return round(n / median_of(once, 5))


def plot(result: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(ATTACKS))
    for i, metric in enumerate(("precision", "recall", "f1")):
        vals = [result["per_attack"][a]["window"][metric] for a in ATTACKS]
        ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=metric)
    ax.set_xticks(x, ATTACKS)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"CAN IDS, window level; clean false alarms {result['false_alarm_rate']:.4%}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = out / "can_ids.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [str(path)]


def main(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="carpulse eval can-ids", description=__doc__)
    ap.add_argument("--logs", type=Path, default=None, help="canlogs folder (default shared data)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-share", type=float, default=0.5, help="share of each log to learn on")
    ap.add_argument("--window-ms", type=float, default=100.0)
    ap.add_argument("--attack-s", type=float, default=2.0, help="longest attack per segment")
    ap.add_argument(
        "--min-flips", type=int, default=32, help="frozen bits flipped to flag a payload"
    )
    ap.add_argument("--out", type=Path, default=None, help="folder for PNG plots")
    args = ap.parse_args(argv)
    if not 0.05 <= args.train_share <= 0.95:
        raise ConfigError(f"--train-share must be in [0.05, 0.95], got {args.train_share}")
    root = args.logs or canlog_dir()
    if not root.is_dir():
        raise ConfigError(f"CAN log folder {root} does not exist")
    result = evaluate(
        root, args.seed, args.train_share, args.window_ms, args.attack_s, args.min_flips
    )
    if args.out is not None:
        result["plots"] = plot(result, args.out)
    return result
