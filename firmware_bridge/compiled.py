"""The compiled batch DBC decoder: a drop-in for ``CantoolsDecoder`` that decodes with numba.

``CompiledDecoder(db).decode(frames)`` returns the same samples (names, time order, values
bit-identical after ``float()``) and the same ``DecodeStats`` as the cantools reference, one call
into a numba kernel per batch. The DBC is compiled to tables (``firmware_bridge.dbc_plan``), so
the kernel is compiled once per process for every DBC.

Short frames (DLC below the message length) are counted in ``short_dlc``. By default they are
dropped, as ``CantoolsDecoder`` drops them. With ``allow_truncated=True`` they are decoded as
cantools' ``decode(..., allow_truncated=True)`` does: every signal wholly inside the received
bytes is kept, the rest (and multiplexed branches whose selector is missing) left out; such
frames count as ``decoded`` (and ``short_dlc``).

Choices are not applied (values stay raw numbers); ``choices(path)`` gives a signal's table.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import cantools
import cantools.database
import numpy as np

from core.errors import DecodeError
from core.frames import Frames
from core.wire import Samples
from firmware_bridge.dbc import DecodeStats, private_path
from firmware_bridge.dbc_plan import MSG_MAXOUT, DecodePlan, build_plan
from firmware_bridge.decode_kernel import (
    N_STATS,
    ST_DECODED,
    ST_FAILED,
    ST_SHORT,
    ST_UNKNOWN,
    _decode,
)

log = logging.getLogger(__name__)


class CompiledDecoder:
    """Decode blocks of frames with one numba kernel call; agrees with ``CantoolsDecoder``."""

    def __init__(
        self,
        db: cantools.database.can.Database,
        mapping: Mapping[tuple[str, str], str] | None = None,
        *,
        allow_truncated: bool = False,
    ) -> None:
        self.db = db
        self.mapping = dict(mapping or {})
        self.allow_truncated = allow_truncated
        self.plan: DecodePlan = build_plan(db, self.signal_path)
        self.names: tuple[str, ...] = tuple(self.plan.names)
        self._block: np.ndarray | None = None
        # Samples per frame of the densest batch: sizes the next outputs (grown if short).
        msgs = self.plan.msgs
        self._max_out = int(msgs[:, MSG_MAXOUT].max()) if len(msgs) else 0
        self._per_frame = 8.0
        self._slot = {name: i for i, name in enumerate(self.names)}
        self._choices: dict[str, dict[int, str]] = {}
        for m in self.plan.messages:
            for s in m.signals:
                if s.choices:
                    table = {int(k): str(v) for k, v in s.choices.items()}
                    self._choices.setdefault(self.signal_path(m.name, s.name), table)

    def signal_path(self, message: str, signal: str) -> str:
        return self.mapping.get((message, signal)) or private_path(message, signal)

    def choices(self, path: str) -> dict[int, str]:
        """The value table of a signal (raw number -> text), empty when it has none."""
        return dict(self._choices.get(path, {}))

    @property
    def fallback_messages(self) -> dict[str, str]:
        """Messages decoded through cantools instead of the kernel, with the reason."""
        return dict(self.plan.fallback_reasons)

    def decode(self, frames: Frames) -> tuple[Samples, DecodeStats]:
        n = len(frames)
        p = self.plan
        can_id = np.ascontiguousarray(frames.can_id, dtype=np.uint32)
        extended = np.ascontiguousarray(frames.extended, dtype=np.bool_)
        dlc = np.ascontiguousarray(frames.dlc, dtype=np.uint8)
        ts = np.ascontiguousarray(frames.ts_us, dtype=np.int64)
        data = np.ascontiguousarray(frames.data, dtype=np.uint8)
        # The kernel trusts these shapes (numba does not bounds-check): refuse a malformed block.
        for field, col in (("can_id", can_id), ("extended", extended), ("dlc", dlc)):
            if col.shape != (n,):
                raise DecodeError(f"Frames.{field} has shape {col.shape}, expected ({n},)")
        if data.ndim != 2 or data.shape[0] != n:
            raise DecodeError(f"Frames.data has shape {data.shape}, expected ({n}, width)")
        # Room for the samples, from the samples per frame seen so far; the kernel stops at the
        # first frame that might not fit, and the loop grows the outputs and goes on from there.
        cap = int(n * self._per_frame) + self._max_out
        out_ts, out_val, out_sig = self._outputs(cap)
        n_fb_max = n if p.fallback_reasons else 0
        fb_frame = np.empty(n_fb_max, dtype=np.int64)
        fb_msg = np.empty(n_fb_max, dtype=np.int64)
        fb_pos = np.empty(n_fb_max, dtype=np.int64)
        st = np.zeros(N_STATS, dtype=np.int64)
        tmp_u = np.zeros(1, dtype=np.uint64)
        tmp_u32 = np.zeros(1, dtype=np.uint32)
        stack = np.empty(p.max_nodes + 1, dtype=np.int64)
        scratch = np.zeros((3, p.widest), dtype=np.int64)
        i = n_out = n_fb = 0
        while True:
            i, n_out, n_fb = _decode(
                can_id,
                extended,
                dlc,
                data,
                ts,
                self.allow_truncated,
                p.std_lookup,
                p.ext_keys,
                p.ext_msgs,
                p.msgs,
                p.nodes,
                p.ents,
                p.scales,
                p.iscales,
                p.hots,
                p.muxers,
                p.cases,
                stack,
                scratch,
                tmp_u,
                tmp_u.view(np.float64),
                tmp_u32,
                tmp_u32.view(np.float32),
                out_sig,
                out_ts,
                out_val,
                fb_frame,
                fb_msg,
                fb_pos,
                st,
                i,
                n_out,
                n_fb,
            )
            if i >= n:
                break
            cap = max(2 * cap, n_out + int((n - i) * self._per_frame) + self._max_out)
            grown = self._outputs(cap)
            for old, new in zip((out_ts, out_val, out_sig), grown, strict=True):
                new[:n_out] = old[:n_out]
            out_ts, out_val, out_sig = grown
        if n:  # the densest batch so far: over-sizing costs nothing once the block is reused
            self._per_frame = max(self._per_frame, n_out / n * 1.05)
        stats = DecodeStats(
            frames=n,
            decoded=int(st[ST_DECODED]),
            unknown_id=int(st[ST_UNKNOWN]),
            short_dlc=int(st[ST_SHORT]),
            failed=int(st[ST_FAILED]),
        )
        sig, tsv, val = out_sig[:n_out], out_ts[:n_out], out_val[:n_out]
        if n_fb:
            sig, tsv, val = self._fallback(
                frames, fb_frame[:n_fb], fb_msg[:n_fb], fb_pos[:n_fb], sig, tsv, val, stats
            )
        return Samples(self.names, sig, tsv, val), stats

    def _outputs(self, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ts, value, sig)`` columns with room for ``cap`` samples, carved from one block."""
        block = self._output_block(cap * 20)
        return (
            block[: cap * 8].view(np.int64),
            block[cap * 8 : cap * 16].view(np.float64),
            block[cap * 16 : cap * 20].view(np.int32),
        )

    def _output_block(self, nbytes: int) -> np.ndarray:
        """Memory for the three output columns, recycled when no earlier result still uses it.

        Fresh memory costs a page fault per 4 KiB on first touch, as much as the decode itself;
        a caller that drops each batch's samples (the edge agent, a log re-decode) gets the same
        warm block back. A block any live ``Samples`` still views is never reused: its arrays
        hold a reference to it, which the reference count shows.
        """
        shared = self._block is not None and _block_refs(self) != _UNSHARED_REFS  # count first
        block = self._block
        if (
            block is None
            or shared
            or len(block) < nbytes
            or len(block) > max(8 * nbytes, 1 << 26)  # do not pin a huge block for tiny batches
        ):
            block = np.empty(max(nbytes, 64), dtype=np.uint8)
            self._block = block
        return block

    def _fallback(
        self,
        frames: Frames,
        fb_frame: np.ndarray,
        fb_msg: np.ndarray,
        fb_pos: np.ndarray,
        sig: np.ndarray,
        tsv: np.ndarray,
        val: np.ndarray,
        stats: DecodeStats,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode the (rare) frames of fallback messages with cantools and splice them in."""
        at: list[int] = []
        f_sig: list[int] = []
        f_ts: list[int] = []
        f_val: list[float] = []
        for i, m, where in zip(fb_frame.tolist(), fb_msg.tolist(), fb_pos.tolist(), strict=True):
            msg = self.plan.messages[m]
            dlc = int(frames.dlc[i])
            try:
                values = msg.decode(
                    bytes(frames.data[i, :dlc]),
                    decode_choices=False,
                    scaling=True,
                    allow_truncated=self.allow_truncated,
                )
            except (cantools.database.DecodeError, ValueError, KeyError, OverflowError) as err:
                stats.failed += 1
                log.debug("frame 0x%x: %s", int(frames.can_id[i]), err)
                continue
            stats.decoded += 1
            for name, value in values.items():  # type: ignore[union-attr]
                at.append(where)
                f_sig.append(self._slot[self.signal_path(msg.name, name)])
                f_ts.append(int(frames.ts_us[i]))
                f_val.append(float(value))  # type: ignore[arg-type]
        if not at:
            return sig, tsv, val
        # np.insert keeps the given order for equal positions, so each frame's samples stay together.
        return (
            np.insert(sig, at, np.asarray(f_sig, dtype=np.int32)),
            np.insert(tsv, at, np.asarray(f_ts, dtype=np.int64)),
            np.insert(val, at, np.asarray(f_val, dtype=np.float64)),
        )


def _block_refs(holder: Any) -> int:
    return sys.getrefcount(holder._block)


class _Holder:
    _block: np.ndarray | None = None


def _unshared_refs() -> int:
    """References to a block only its decoder holds, counted the way ``_block_refs`` counts them
    (measured, not assumed: how many references a call borrows differs between Python versions)."""
    h = _Holder()
    h._block = np.empty(8, dtype=np.uint8)
    return _block_refs(h)


_UNSHARED_REFS = _unshared_refs()


def compile_kernels() -> None:
    """Compile (or load) the kernels now, e.g. at start-up, by decoding one empty batch."""
    db = cantools.database.can.Database()
    frames = Frames(
        np.zeros(0, np.int64),
        np.zeros(0, np.uint32),
        np.zeros(0, bool),
        np.zeros(0, np.uint8),
        np.zeros((0, 8), np.uint8),
    )
    CompiledDecoder(db).decode(frames)
