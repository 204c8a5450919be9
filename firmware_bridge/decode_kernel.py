"""The numba kernel of the compiled DBC decoder: message lookup and decode of a block in one call."""

from __future__ import annotations

import numpy as np

from core import kernel_flags
from core.jit import njit
from firmware_bridge.dbc_plan import (
    C_NODE,
    C_VALUE,
    E_NOMINAL_END,
    H_BE,
    H_FLOAT,
    H_LEN,
    H_MODE,
    H_SEL,
    H_SHIFT,
    H_SIGNED,
    MAX_SLOTS,
    MODE_FMUL,
    MODE_IMUL_FADD,
    MODE_INT,
    MODE_UINT,
    MSG_FALLBACK,
    MSG_FLAG,
    MSG_LEN,
    MSG_MAXOUT,
    MSG_ROOT,
    N_BAD,
    N_MUX0,
    N_MUX1,
    N_SIG0,
    N_SIG1,
    X_CASE0,
    X_CASE1,
    X_ENTRY,
)

# Indices into the stats array the decode kernel fills.
ST_DECODED, ST_UNKNOWN, ST_SHORT, ST_FAILED, ST_FALLBACK = range(5)
N_STATS = 5

_TWO63 = 9.223372036854775808e18
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.EXACT_MATH)
def _raw_wide(data, i, avail, length, be, shift, nbits):  # type: ignore[no-untyped-def]
    """Raw bits of a signal in a payload longer than 8 bytes (CAN FD), byte by byte."""
    v = np.uint64(0)
    out = 0
    bit = shift
    while out < nbits:
        j = bit >> 3
        off = bit & 7
        k = length - 1 - j if be else j
        b = np.uint64(data[i, k]) if k < avail else np.uint64(0xFF)
        take = 8 - off
        if take > nbits - out:
            take = nbits - out
        chunk = (b >> np.uint64(off)) & np.uint64((1 << take) - 1)
        v |= chunk << np.uint64(out)
        out += take
        bit += take
    return v


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.EXACT_MATH)
def _decode(  # type: ignore[no-untyped-def]
    can_id,
    extended,
    dlc,
    data,
    ts,
    allow_truncated,
    std_lookup,
    ext_keys,
    ext_msgs,
    msgs,
    nodes,
    ents,
    scales,
    iscales,
    hots,
    muxers,
    cases,
    stack,
    scratch,
    tmp_u,
    tmp_f,
    tmp_u32,
    tmp_f32,
    out_sig,
    out_ts,
    out_val,
    fb_frame,
    fb_msg,
    fb_pos,
    stats,
    first,
    pos,
    nfb,
):
    """Decode frames ``first..`` into ``out_*`` from ``pos`` on, in frame order.

    Returns ``(next frame, samples, fallback frames)``: the next frame is ``len(can_id)`` when all
    are done, or the first frame whose widest decode would not fit the outputs (the caller grows
    them and calls again from there). A frame that fails (unknown multiplexer value, a codec format
    longer than the payload) leaves no samples. Fallback frames are listed with their message and
    the output position their samples belong at.
    """
    width = data.shape[1]
    # Scratch comes from the caller (allocating here would compile numba's allocators too, and
    # compile time is what a restarted Pi waits for): the node stack, per entry of the current
    # node [received, selector valid, selector], and words viewed as both uint and float.
    present = scratch[0]
    sel_ok = scratch[1]
    sels = scratch[2]
    one = np.uint64(1)
    cap = out_val.shape[0]
    n_ext = ext_keys.shape[0]
    for i in range(first, can_id.shape[0]):
        # Message lookup: a direct table for 11-bit ids, binary search in the sorted other keys.
        m = -1
        cid = np.int64(can_id[i])
        if extended[i] or cid >= std_lookup.shape[0]:
            if extended[i]:
                cid |= np.int64(1) << 32
            lo = 0
            hi = n_ext
            while lo < hi:
                mid = (lo + hi) >> 1
                if ext_keys[mid] < cid:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < n_ext and ext_keys[lo] == cid:
                m = ext_msgs[lo]
        else:
            m = std_lookup[cid]
        if m < 0:
            stats[ST_UNKNOWN] += 1
            continue
        if pos + msgs[m, MSG_MAXOUT] > cap:
            return i, pos, nfb  # out of room: nothing of this frame counted yet
        length = msgs[m, MSG_LEN]
        avail = np.int64(dlc[i])
        if avail > width:
            avail = width
        short = avail < length
        if short:
            stats[ST_SHORT] += 1
            if not allow_truncated:
                continue
        if msgs[m, MSG_FLAG] == MSG_FALLBACK:
            fb_frame[nfb] = i
            fb_msg[nfb] = m
            fb_pos[nfb] = pos
            nfb += 1
            stats[ST_FALLBACK] += 1
            continue
        # Up to 8 bytes: the payload as one little- and one big-endian integer, like bitstruct
        # sees it (missing bytes of a truncated frame padded with 0xFF, as cantools pads them).
        narrow = length <= 8
        u_le = np.uint64(0)
        u_be = np.uint64(0)
        if narrow:
            for j in range(length):
                b = np.uint64(data[i, j]) if j < avail else np.uint64(0xFF)
                u_le |= b << np.uint64(8 * j)
                u_be = (u_be << np.uint64(8)) | b
        avail_bits = 8 * avail
        start = pos
        ok = True
        stack[0] = msgs[m, MSG_ROOT]
        sp = 1
        while sp > 0 and ok:
            sp -= 1
            k = stack[sp]
            if nodes[k, N_BAD]:
                ok = False
                break
            e0 = nodes[k, N_SIG0]
            for e in range(e0, nodes[k, N_SIG1]):
                h = hots[e]  # slot, shift, length, flags: one load (see dbc_plan H_*)
                is_sel = (h >> np.uint64(H_SEL)) & one != 0  # a multiplexer selector here
                if short and ents[e, E_NOMINAL_END] > avail_bits:
                    if is_sel:
                        present[e - e0] = 0  # cantools drops signals not wholly received
                    continue
                nbits = np.int64((h >> np.uint64(H_LEN)) & np.uint64(0x7F))
                mask = _ALL >> np.uint64(64 - nbits)
                shift = np.int64((h >> np.uint64(H_SHIFT)) & np.uint64(0x3FF))
                be = (h >> np.uint64(H_BE)) & one != 0
                if narrow:
                    u = u_be if be else u_le
                    raw = (u >> np.uint64(shift)) & mask
                else:
                    raw = _raw_wide(data, i, avail, length, be, shift, nbits)
                # The scaled value exactly as cantools computes it (see dbc_plan MODE_*). Kept
                # inline: a helper taking arrays costs reference-count updates per call, several
                # times the decode itself.
                mode = np.int64((h >> np.uint64(H_MODE)) & np.uint64(7))
                signed = (h >> np.uint64(H_SIGNED)) & one != 0
                if mode == MODE_INT:
                    if signed and nbits < 64 and (raw >> np.uint64(nbits - 1)) & one:
                        raw |= ~mask  # sign-extend the two's complement value
                    iv = np.int64(raw) * iscales[e, 0] + iscales[e, 1]
                    x = np.float64(iv)
                    if is_sel:
                        present[e - e0] = 1
                        sel_ok[e - e0] = 1
                        sels[e - e0] = iv
                else:
                    if (h >> np.uint64(H_FLOAT)) & one != 0:
                        if nbits == 32:
                            tmp_u32[0] = np.uint32(raw)
                            x = np.float64(tmp_f32[0])
                        else:
                            tmp_u[0] = raw
                            x = tmp_f[0]
                        if mode == MODE_FMUL:
                            x = x * scales[e, 0] + scales[e, 1]
                    elif mode == MODE_UINT:
                        x = np.float64(raw)
                    else:
                        if signed and nbits < 64 and (raw >> np.uint64(nbits - 1)) & one:
                            raw |= ~mask
                        if mode == MODE_IMUL_FADD:
                            x = np.float64(np.int64(raw) * iscales[e, 0]) + scales[e, 1]
                        elif signed:
                            x = np.float64(np.int64(raw)) * scales[e, 0] + scales[e, 1]
                        else:
                            x = np.float64(raw) * scales[e, 0] + scales[e, 1]
                    if is_sel:
                        # int(x) in Python: NaN/inf raise, huge values match no case.
                        good = abs(x) < _TWO63  # False for NaN and inf too
                        sel = np.int64(0)
                        if mode == MODE_UINT:  # the raw integer itself, exact beyond 2**53
                            good = raw <= np.uint64(0x7FFFFFFFFFFFFFFF)
                            if good:
                                sel = np.int64(raw)
                        elif good:
                            sel = np.int64(x)
                        present[e - e0] = 1
                        sel_ok[e - e0] = 1 if good else 0
                        sels[e - e0] = sel
                out_sig[pos] = np.int32(h & np.uint64(MAX_SLOTS - 1))
                out_ts[pos] = ts[i]
                out_val[pos] = x
                pos += 1
            # Children are pushed last-first so they pop (and decode) in cantools' order.
            for x_i in range(nodes[k, N_MUX1] - 1, nodes[k, N_MUX0] - 1, -1):
                local = muxers[x_i, X_ENTRY] - e0
                if present[local] == 0:
                    continue  # selector not received (truncated frame): branch left out
                child = -1
                if sel_ok[local] != 0:
                    sel = sels[local]
                    lo = muxers[x_i, X_CASE0]
                    hi = muxers[x_i, X_CASE1]
                    while lo < hi:
                        mid = (lo + hi) >> 1
                        if cases[mid, C_VALUE] < sel:
                            lo = mid + 1
                        else:
                            hi = mid
                    if lo < muxers[x_i, X_CASE1] and cases[lo, C_VALUE] == sel:
                        child = cases[lo, C_NODE]
                if child < 0:
                    ok = False
                    break
                stack[sp] = child
                sp += 1
        if ok:
            stats[ST_DECODED] += 1
        else:
            pos = start
            stats[ST_FAILED] += 1
    return can_id.shape[0], pos, nfb
