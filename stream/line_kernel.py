"""The line-protocol renderer's compiled loop: one batch's lines as bytes, no per-sample Python.

``stream.lines.batch_lines`` decides which rows stay, finds their time order and formats each
distinct value once (``repr``: exact, shortest); this kernel then walks the rows in that order,
starts a line wherever the timestamp changes and copies the per-signal ``name=`` prefixes and
the value texts into one buffer, with the head (measurement and tags) at the start of each line
and the timestamp in decimal at its end (its high digits kept from the line before). The
plain Python version it must equal byte for byte is ``tests/reference/line_protocol.py``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from core import kernel_flags

COMMA, SPACE, NEWLINE, MINUS, ZERO = 44, 32, 10, 45, 48
MAX_VALUE_TEXT = 32  # repr of a float64 is at most 24 characters ('-2.2250738585072014e-308')


# "00".."99": a timestamp is written two digits per division
DIGIT_PAIRS = np.frombuffer("".join(f"{i:02d}" for i in range(100)).encode(), np.uint8)
HIGH = 100_000_000  # a timestamp's low 8 digits change from line to line, its high ones rarely


@njit(cache=kernel_flags.CACHE, nogil=True)
def _render(
    head: np.ndarray,
    pre_buf: np.ndarray,
    pre_off: np.ndarray,
    val_buf: np.ndarray,
    val_off: np.ndarray,
    new_buf: np.ndarray,
    new_off: np.ndarray,
    order: np.ndarray,
    sig: np.ndarray,
    vix: np.ndarray,
    ts: np.ndarray,
    out: np.ndarray,
    ends: np.ndarray,
) -> int:  # pragma: no cover - compiled
    """Rows ``order[0], order[1]...`` (time order); a new line wherever the timestamp changes.
    Returns how many lines were written (``ends[:lines]``)."""
    pos = 0
    lines = 0
    high_digits = np.empty(20, np.uint8)
    high_len = 0
    high = -1  # the high part whose digits are in high_digits
    n = len(order)
    r = 0
    while r < n:
        t = ts[order[r]]
        for k in range(len(head)):
            out[pos + k] = head[k]
        pos += len(head)
        first = True
        while r < n and ts[order[r]] == t:
            i = order[r]
            if not first:
                out[pos] = COMMA
                pos += 1
            first = False
            s = sig[i]
            for k in range(pre_off[s], pre_off[s + 1]):
                out[pos] = pre_buf[k]
                pos += 1
            v = vix[i]
            if v >= 0:
                for k in range(val_off[v], val_off[v + 1]):
                    out[pos] = val_buf[k]
                    pos += 1
            else:
                v = -1 - v
                for k in range(new_off[v], new_off[v + 1]):
                    out[pos] = new_buf[k]
                    pos += 1
            r += 1
        out[pos] = SPACE
        pos += 1
        if t < 0:  # |t| < 2**63 / 1000: the caller keeps only InfluxDB's range
            out[pos] = MINUS
            pos += 1
            t = -t
        hi = t // HIGH
        lo = t - hi * HIGH
        if hi > 0:
            if hi != high:  # the digits of the high part, kept while it stays
                high = hi
                high_len = 0
                while hi > 0:
                    high_digits[high_len] = ZERO + hi % 10
                    high_len += 1
                    hi //= 10
            for k in range(high_len):
                out[pos + k] = high_digits[high_len - 1 - k]
            pos += high_len
            for k in range(3, -1, -1):  # the low part: eight digits, zeros included
                d = lo % 100
                lo //= 100
                out[pos + 2 * k] = DIGIT_PAIRS[2 * d]
                out[pos + 2 * k + 1] = DIGIT_PAIRS[2 * d + 1]
            pos += 8
        else:
            nd = 0
            while True:
                high_digits[nd] = ZERO + lo % 10
                nd += 1
                lo //= 10
                if lo == 0:
                    break
            for k in range(nd):
                out[pos + k] = high_digits[nd - 1 - k]
            pos += nd
            high = -1  # high_digits was used as scratch
        out[pos] = NEWLINE
        pos += 1
        ends[lines] = pos
        lines += 1
    return lines


GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing of a value's bit pattern


def _slots(keys: np.ndarray, shift: np.uint64) -> np.ndarray:
    """Each key's home slot: an array product, which wraps modulo 2**64 silently (a scalar one
    warns of overflow, also when the kernels below run as Python with NUMBA_DISABLE_JIT=1)."""
    return ((keys.view(np.uint64) * GOLDEN) >> shift).astype(np.int64)


@njit(cache=kernel_flags.CACHE, nogil=True)
def _hash_build(
    keys: np.ndarray, home: np.ndarray, slot_keys: np.ndarray, slot_vals: np.ndarray
) -> None:  # pragma: no cover - compiled
    mask = len(slot_keys) - 1
    for i in range(len(keys)):
        j = home[i]
        while slot_vals[j] != -1:
            j = (j + 1) & mask
        slot_keys[j] = keys[i]
        slot_vals[j] = i


@njit(cache=kernel_flags.CACHE, nogil=True)
def _hash_find(
    slot_keys: np.ndarray,
    slot_vals: np.ndarray,
    bits: np.ndarray,
    home: np.ndarray,
    out: np.ndarray,
) -> int:  # pragma: no cover - compiled
    mask = len(slot_keys) - 1
    misses = 0
    for i in range(len(bits)):
        k = bits[i]
        j = home[i]
        while True:
            v = slot_vals[j]
            if v == -1:
                out[i] = -1
                misses += 1
                break
            if slot_keys[j] == k:
                out[i] = v
                break
            j = (j + 1) & mask
    return misses


class HashIndex:
    """Open-addressing hash of int64 keys to their position in a list (load factor <= 1/2)."""

    def __init__(self, keys: np.ndarray) -> None:
        size = 1 << max(4, int(2 * len(keys) - 1).bit_length())
        self.shift = np.uint64(64 - (size.bit_length() - 1))
        self.slot_keys = np.zeros(size, np.int64)
        self.slot_vals = np.full(size, -1, np.int64)
        keys = np.ascontiguousarray(keys, np.int64)
        _hash_build(keys, _slots(keys, self.shift), self.slot_keys, self.slot_vals)

    def find(self, bits: np.ndarray) -> tuple[np.ndarray, int]:
        """Each key's position, -1 where it is not in the index; and how many were not."""
        bits = np.ascontiguousarray(bits, np.int64)
        out = np.empty(len(bits), np.int64)
        misses = _hash_find(self.slot_keys, self.slot_vals, bits, _slots(bits, self.shift), out)
        return out, misses


def text_table(items: list[bytes] | list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated items and their offsets (``off[i]:off[i + 1]`` is item ``i``); ``str``
    items must be ASCII (one byte per character), as ``repr`` of a float is."""
    off = np.zeros(len(items) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, items), np.int64, len(items)), out=off[1:])
    if items and isinstance(items[0], str):
        joined = "".join(items).encode("ascii")  # type: ignore[arg-type]
    else:
        joined = b"".join(items)  # type: ignore[arg-type]
    return np.frombuffer(joined, np.uint8), off


def render_block(
    head: bytes,
    prefixes: tuple[np.ndarray, np.ndarray],
    table: tuple[np.ndarray, np.ndarray],
    new: tuple[np.ndarray, np.ndarray],
    order: np.ndarray,
    sig: np.ndarray,
    vix: np.ndarray,
    ts: np.ndarray,
) -> tuple[bytes, np.ndarray]:
    """Lines ``head + prefixes[sig]value[vix],... ts`` of rows ``order[0], order[1], ...`` (the
    rows in time order: a line holds the consecutive rows of one timestamp), each ending with a
    newline, in one buffer, and where each line ends (``ends[i]``: one past its newline). A value
    text is item ``vix`` of ``table``, or item ``-vix - 1`` of ``new`` when ``vix < 0`` (tables
    from ``text_table``; value texts are ASCII, ``head`` and ``prefixes`` UTF-8)."""
    if not len(order):
        return b"", np.zeros(0, np.int64)
    pre_buf, pre_off = prefixes
    longest = int(np.diff(pre_off).max()) + MAX_VALUE_TEXT + 1  # name=value and a comma
    size = len(order) * (longest + len(head) + 22)  # space, sign, 19 digits, newline per line
    out = np.empty(size, np.uint8)
    ends = np.empty(len(order), np.int64)
    lines = _render(
        np.frombuffer(head, np.uint8), pre_buf, pre_off, table[0], table[1], new[0], new[1],
        np.ascontiguousarray(order, np.int64), np.ascontiguousarray(sig, np.int64),
        np.ascontiguousarray(vix, np.int64), np.ascontiguousarray(ts, np.int64), out, ends,
    )  # fmt: skip
    ends = ends[:lines]
    return out[: ends[-1]].tobytes(), ends


def render_lines(
    head: bytes,
    prefixes: tuple[np.ndarray, np.ndarray],
    table: tuple[np.ndarray, np.ndarray],
    new: tuple[np.ndarray, np.ndarray],
    order: np.ndarray,
    sig: np.ndarray,
    vix: np.ndarray,
    ts: np.ndarray,
) -> list[str]:
    """``render_block``'s lines as a list of strings (without their newlines)."""
    data, _ = render_block(head, prefixes, table, new, order, sig, vix, ts)
    return data[:-1].decode().split("\n") if data else []
