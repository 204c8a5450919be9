"""Compile a cantools ``Database`` into flat integer/float tables that one numba kernel can decode.

The DBC is data, not code: every database compiles to the same few array types, so the decode
kernel is compiled once per process whatever the DBC. The tables mirror cantools' own codec tree
(``Message._codecs``): one *node* per multiplexer branch, each with its signals and its
multiplexers, and each signal's bit position is taken from the ``bitstruct`` format cantools
builds for that node (so even overlapping signals of a ``strict=False`` DBC decode as cantools
decodes them). Messages cantools decodes in a way these tables cannot express exactly (containers,
duplicate signal names, odd float widths, integer scalings that could overflow int64) are marked
*fallback* and decoded by cantools itself, so the compiled decoder is never less correct.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cantools.database
import numpy as np
from cantools.database.conversion import (
    BaseConversion,
    IdentityConversion,
    LinearConversion,
    LinearIntegerConversion,
)

log = logging.getLogger(__name__)

# Message flags (column MSG_FLAG).
MSG_OK = 0
MSG_FALLBACK = 1  # decode this message's frames with cantools (see module docstring)

# Value modes (column E_MODE): how cantools turns the raw value into the scaled one.
MODE_INT = 0  # exact integer raw * scale + offset (int64, range checked here), then float()
MODE_FMUL = 1  # float(raw) * scale + offset in float64, in that order (Python's int*float)
MODE_IMUL_FADD = 2  # int scale, float offset: float(raw * scale) + offset
MODE_UINT = 3  # unsigned 64-bit identity: float(uint64 raw)
MODE_FRAW = 4  # float signal, identity: the raw float untouched (keeps -0.0 and NaN payloads)

# Columns of the per-entry integer table (one entry = one signal in one codec node).
E_SLOT, E_BE, E_SHIFT, E_LEN, E_SIGNED, E_FLOAT, E_MODE, E_NOMINAL_END, E_SEL = range(9)
E_COLS = 9
# The hot fields of an entry packed in one uint64 (``DecodePlan.hots``), so the kernel reads one
# word per signal instead of seven table cells: bit offsets and widths of each field.
H_SLOT, H_SHIFT, H_LEN, H_BE, H_MODE, H_SIGNED, H_SEL, H_FLOAT = 0, 24, 34, 41, 42, 45, 46, 47
MAX_SLOTS = 1 << 24
# Columns of the message table.
MSG_LEN, MSG_ROOT, MSG_FLAG, MSG_MAXOUT, MSG_NODES = range(5)
# Columns of the node table: entries [N_SIG0, N_SIG1), multiplexers [N_MUX0, N_MUX1), N_BAD.
N_SIG0, N_SIG1, N_MUX0, N_MUX1, N_BAD = range(5)
# Columns of the multiplexer table: the entry holding the selector, and its case range.
X_ENTRY, X_CASE0, X_CASE1 = range(3)
# Columns of the case table (sorted by value within one multiplexer): selector value, node.
C_VALUE, C_NODE = range(2)

STD_IDS = 2048
INT64_MAX = (1 << 63) - 1


@dataclass
class DecodePlan:
    """A DBC as tables; see the column constants above for the layout."""

    names: list[str]
    std_lookup: np.ndarray  # int32 (2048,), message index of an 11-bit id or -1
    ext_keys: np.ndarray  # int64 sorted keys: id | extended << 32 (all but 11-bit ids < 2048)
    ext_msgs: np.ndarray  # int32 message index per ext_keys entry
    msgs: np.ndarray  # int64 (M, 5)
    nodes: np.ndarray  # int64 (K, 5)
    ents: np.ndarray  # int32 (S, 9): every entry field; the kernel reads hots, and E_NOMINAL_END
    scales: np.ndarray  # float64 (S, 2): float scale, float offset
    iscales: np.ndarray  # int64 (S, 2): integer scale, integer offset
    hots: np.ndarray  # uint64 (S,): E_SLOT..E_FLOAT packed at the H_* bit offsets
    muxers: np.ndarray  # int64 (X, 3)
    cases: np.ndarray  # int64 (Y, 2)
    messages: list[Any]  # cantools Message per message index
    fallback_reasons: dict[str, str] = field(default_factory=dict)
    max_nodes: int = 1  # most codec nodes in one message (the kernel's stack depth)
    widest: int = 1  # most signals in one codec node (the kernel's scratch width)

    @property
    def n_messages(self) -> int:
        return len(self.messages)


def _network_start(signal: Any) -> int:
    """cantools' sequential start bit (Motorola start bits count in 'sawtooth' order)."""
    if signal.byte_order == "big_endian":
        return int(8 * (signal.start // 8) + (7 - (signal.start % 8)))
    return int(signal.start)


def _format_positions(signals: list[Any], length: int) -> tuple[dict[int, int], int, int]:
    """Where each signal really sits in cantools' two bitstruct formats of one codec node.

    Replays ``cantools.database.utils.create_encode_decode_formats``: big-endian signals sorted by
    network start bit, little-endian ones in reverse order on the reversed payload; padding is only
    inserted when positive, so overlapping signals shift everything after them. Returns
    ``{id(signal): MSB-first position in its format}`` and the two formats' total bit counts (a
    format longer than the payload makes bitstruct, hence cantools, fail every decode).
    """
    fl = 8 * length
    pos_of: dict[int, int] = {}
    pos = start = 0
    be = sorted(
        (s for s in signals if s.byte_order == "big_endian"), key=lambda s: _network_start(s)
    )
    for s in be:
        pad = _network_start(s) - start
        if pad > 0:
            pos += pad
        pos_of[id(s)] = pos
        pos += s.length
        start = _network_start(s) + s.length
    if start < fl:
        pos += fl - start
    total_be = pos
    pos, end = 0, fl
    for s in signals[::-1]:
        if s.byte_order == "big_endian":
            continue
        pad = end - (s.start + s.length)
        if pad > 0:
            pos += pad
        pos_of[id(s)] = pos
        pos += s.length
        end = s.start
    if end > 0:
        pos += end
    return pos_of, total_be, pos


def _value_mode(signal: Any) -> tuple[int, int, int, float, float] | str:
    """``(mode, int scale, int offset, float scale, float offset)`` or why it cannot be exact."""
    conv = getattr(signal.conversion, "_conversion", signal.conversion)
    if not isinstance(conv, IdentityConversion | LinearIntegerConversion | LinearConversion):
        conv = BaseConversion.factory(signal.scale, signal.offset, None, signal.is_float)
    length, signed, is_float = int(signal.length), bool(signal.is_signed), bool(signal.is_float)
    if is_float:
        if length not in (32, 64):
            return f"float signal {signal.name} of {length} bits"
    elif not 1 <= length <= 64:
        return f"signal {signal.name} of {length} bits"
    raw_max = 1 << (length - 1) if signed or is_float else (1 << length) - 1
    if isinstance(conv, IdentityConversion):
        if is_float:
            return (MODE_FRAW, 0, 0, 1.0, 0.0)
        if not signed and length == 64:
            return (MODE_UINT, 1, 0, 1.0, 0.0)
        return (MODE_INT, 1, 0, 1.0, 0.0)
    scale, offset = conv.scale, conv.offset
    if isinstance(conv, LinearIntegerConversion):
        if raw_max * abs(int(scale)) + abs(int(offset)) > INT64_MAX:
            return f"integer scaling of {signal.name} may overflow int64"
        return (MODE_INT, int(scale), int(offset), 0.0, 0.0)
    # LinearConversion: Python evaluates raw * scale + offset with the operand types it has.
    if isinstance(scale, int) and not is_float:
        if raw_max * abs(scale) > INT64_MAX:
            return f"integer product of {signal.name} may overflow int64"
        return (MODE_IMUL_FADD, int(scale), 0, 0.0, float(offset))
    return (MODE_FMUL, 0, 0, float(scale), float(offset))


class _Builder:
    def __init__(self, path_of: Any) -> None:
        self.path_of = path_of
        self.slots: dict[str, int] = {}
        self.nodes: list[list[int]] = []
        self.ents: list[list[int]] = []
        self.scales: list[tuple[float, float]] = []
        self.iscales: list[tuple[int, int]] = []
        self.muxers: list[list[int]] = []
        self.cases: list[tuple[int, int]] = []

    def slot(self, message: str, signal: str) -> int:
        return self.slots.setdefault(self.path_of(message, signal), len(self.slots))

    def message(self, msg: Any) -> tuple[int, int, int] | str:
        """Add a message's codec tree; ``(root node, max samples per frame, nodes)`` or a reason."""
        codec = getattr(msg, "_codecs", None)
        if codec is None:
            return "no codec"
        if msg.is_container:
            return "container message"
        names = [s.name for s in msg.signals]
        if len(names) != len(set(names)):
            return "duplicate signal names"
        for s in msg.signals:
            why = _value_mode(s)
            if isinstance(why, str):
                return why
        first = len(self.nodes)
        root, maxout = self.node(msg, codec)
        return root, maxout, len(self.nodes) - first

    def node(self, msg: Any, codec: Mapping[str, Any]) -> tuple[int, int]:
        length = int(msg.length)
        signals = list(codec["signals"])
        pos_of, total_be, total_le = _format_positions(signals, length)
        k = len(self.nodes)
        self.nodes.append([0, 0, 0, 0, int(max(total_be, total_le) > 8 * length)])
        e0 = len(self.ents)
        entry_of: dict[str, int] = {}
        for s in signals:
            got = _value_mode(s)
            assert not isinstance(got, str)  # checked in message()
            mode, iscale, ioffset, fscale, foffset = got
            be = s.byte_order == "big_endian"
            # LSB index of the signal in the payload read as one big (BE) or little (LE) integer.
            shift = 8 * length - pos_of[id(s)] - int(s.length)
            entry_of[s.name] = len(self.ents)
            self.ents.append(
                [
                    self.slot(msg.name, s.name),
                    int(be),
                    shift,
                    int(s.length),
                    int(bool(s.is_signed)),
                    int(bool(s.is_float)),
                    mode,
                    _network_start(s) + int(s.length),
                    0,  # E_SEL, set below for multiplexer selectors
                ]
            )
            self.scales.append((fscale, foffset))
            self.iscales.append((iscale, ioffset))
        e1 = len(self.ents)
        # Children after the node's own entries: cantools decodes a node, then each multiplexer.
        muxer_rows: list[list[int]] = []
        maxout = e1 - e0
        for mux_name, cases in codec["multiplexers"].items():
            child_rows: list[tuple[int, int]] = []
            widest = 0
            for value, child in cases.items():
                child_k, child_out = self.node(msg, child)
                child_rows.append((int(value), child_k))
                widest = max(widest, child_out)
            maxout += widest
            c0 = len(self.cases)
            self.cases.extend(sorted(child_rows))
            muxer_rows.append([entry_of[mux_name], c0, len(self.cases)])
            self.ents[entry_of[mux_name]][E_SEL] = 1
        x0 = len(self.muxers)
        self.muxers.extend(muxer_rows)
        self.nodes[k][:4] = [e0, e1, x0, len(self.muxers)]
        return k, maxout


def pack_hot(ents: np.ndarray) -> np.ndarray:
    """The per-entry fields the kernel reads for every signal, one uint64 each."""
    e = ents.astype(np.uint64)
    fields = [
        (E_SLOT, H_SLOT),
        (E_SHIFT, H_SHIFT),
        (E_LEN, H_LEN),
        (E_BE, H_BE),
        (E_MODE, H_MODE),
        (E_SIGNED, H_SIGNED),
        (E_SEL, H_SEL),
        (E_FLOAT, H_FLOAT),
    ]
    out = np.zeros(len(ents), dtype=np.uint64)
    for col, at in fields:
        out |= e[:, col] << np.uint64(at)
    return out


def build_plan(
    db: cantools.database.can.Database,
    path_of: Any,
) -> DecodePlan:
    """Compile ``db``; ``path_of(message, signal)`` names each signal's output (its VSS path).

    Messages are keyed like ``CantoolsDecoder``: by ``(frame id, extended)``, the last definition
    of a duplicated key winning.
    """
    by_key: dict[tuple[int, bool], Any] = {}
    for m in db.messages:
        by_key[(int(m.frame_id), bool(m.is_extended_frame))] = m
    b = _Builder(path_of)
    msgs: list[list[int]] = []
    messages: list[Any] = []
    reasons: dict[str, str] = {}
    std_lookup = np.full(STD_IDS, -1, dtype=np.int32)
    ext: list[tuple[int, int]] = []
    max_nodes = 1
    for (frame_id, extended), m in by_key.items():
        i = len(messages)
        messages.append(m)
        got = b.message(m)
        if isinstance(got, str):
            reasons[m.name] = got
            # Every signal may come out of a fallback frame: reserve them all.
            for s in m.signals:
                b.slot(m.name, s.name)
            msgs.append([int(m.length), -1, MSG_FALLBACK, len(m.signals), 0])
            log.info("message %s decodes through cantools: %s", m.name, got)
        else:
            root, maxout, n_nodes = got
            max_nodes = max(max_nodes, n_nodes)
            msgs.append([int(m.length), root, MSG_OK, maxout, n_nodes])
        if extended or not 0 <= frame_id < STD_IDS:
            # 29-bit ids, and the odd 11-bit id above 0x7ff a strict=False DBC may hold, go to
            # the sorted keys; the key tells extended from standard like CantoolsDecoder does.
            ext.append((frame_id | (int(extended) << 32), i))
        else:
            std_lookup[frame_id] = i
    ext.sort()

    def table(rows: list[Any], cols: int, dtype: Any = np.int64) -> np.ndarray:
        return np.asarray(rows, dtype=dtype).reshape(len(rows), cols)

    if len(b.slots) > MAX_SLOTS:
        raise ValueError(f"{len(b.slots)} signals: more than the decoder's {MAX_SLOTS}")
    ents = table(b.ents, E_COLS, np.int32)
    return DecodePlan(
        names=list(b.slots),
        std_lookup=std_lookup,
        ext_keys=np.asarray([k for k, _ in ext], dtype=np.int64),
        ext_msgs=np.asarray([v for _, v in ext], dtype=np.int32),
        msgs=table(msgs, 5),
        nodes=table(b.nodes, 5),
        ents=ents,
        hots=pack_hot(ents),
        iscales=table(b.iscales, 2),
        scales=table(b.scales, 2, np.float64),
        muxers=table(b.muxers, 3),
        cases=table(b.cases, 2),
        messages=messages,
        fallback_reasons=reasons,
        max_nodes=max_nodes,
        widest=max(1, max((r[N_SIG1] - r[N_SIG0] for r in b.nodes), default=1)),
    )
