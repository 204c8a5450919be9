"""Half-Space Trees as River's ``anomaly.HalfSpaceTrees``: same trees, same masses, same scores."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
from numba import njit

from core import kernel_flags
from core.errors import DecodeError
from models.state import SlotState, SlotStateful, as_batch


def build_trees(
    n_trees: int,
    height: int,
    limits: Sequence[tuple[float, float]],
    seed: int | None,
    padding: float = 0.15,
) -> tuple[np.ndarray, np.ndarray]:
    """Split feature and threshold of every inner node, in heap order (children 2i+1, 2i+2).

    Draws from ``random.Random(seed)`` in exactly the order of River's ``make_padded_tree``
    (feature weighted by the current range, then a padded uniform split, then left, then right),
    so the same seed gives the same trees as River with features named in sorted order.
    """
    rng = random.Random(seed)
    n_nodes = 2 ** (height + 1) - 1
    feature = np.zeros((n_trees, n_nodes), np.int64)
    threshold = np.zeros((n_trees, n_nodes))
    lims = [list(map(float, lim)) for lim in limits]
    features = list(range(len(lims)))

    def grow(t: int, node: int, h: int) -> None:
        if h == 0:
            return
        on = rng.choices(population=features, weights=[b - a for a, b in lims])[0]
        a, b = lims[on]
        at = rng.uniform(a + padding * (b - a), b - padding * (b - a))
        feature[t, node] = on
        threshold[t, node] = at
        lims[on] = [a, at]
        grow(t, 2 * node + 1, h - 1)
        lims[on] = [at, b]
        grow(t, 2 * node + 2, h - 1)
        lims[on] = [a, b]

    for t in range(n_trees):
        grow(t, 0, height)
    return feature, threshold


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _leaf_table(
    leaf: np.ndarray, height: int, size_limit: float, mass: np.ndarray, table: np.ndarray
) -> None:  # pragma: no cover - compiled; covered by the NUMBA_DISABLE_JIT leg
    """Each leaf's score against a reference window whose leaf counts are ``leaf`` (n_trees, n_leaves).

    Every sample bumps each node on its root-to-leaf path once, so a node's mass is the sum of the
    leaf counts under it. The score walk of River reads only reference masses, fixed for a whole
    window, so its result depends on the leaf reached alone: sum of mass * 2**depth from the root
    until (and including) the first node whose mass is under ``size_limit``. ``mass`` is scratch
    (2 * n_leaves - 1,).
    """
    n_trees, n_leaves = leaf.shape
    n_inner = n_leaves - 1
    live = np.empty(mass.shape[0], np.bool_)
    pre = np.empty(mass.shape[0], np.int64)
    for t in range(n_trees):
        for k in range(n_leaves):
            mass[n_inner + k] = leaf[t, k]
        for nd in range(n_inner - 1, -1, -1):
            mass[nd] = mass[2 * nd + 1] + mass[2 * nd + 2]
        pre[0] = mass[0]
        live[0] = mass[0] >= size_limit
        first = 1
        depth_pow = 2
        for _ in range(height):
            for nd in range(first, 2 * first + 1):
                p = (nd - 1) // 2
                if live[p]:
                    pre[nd] = pre[p] + mass[nd] * depth_pow
                    live[nd] = mass[nd] >= size_limit
                else:
                    pre[nd] = pre[p]
                    live[nd] = False
            first = 2 * first + 1
            depth_pow *= 2
        for k in range(n_leaves):
            table[t, k] = pre[n_inner + k]


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _subtree_mass(leaf: np.ndarray, t: int, nd: int, depth: int, height: int) -> int:
    """A node's learning-window mass: the sum of the leaf counts under it (missing-feature walks)."""
    width = 1 << (height - depth)
    lo = (nd + 1) * width - 1 - (leaf.shape[1] - 1)
    m = 0
    for k in range(lo, lo + width):
        m += leaf[t, k]
    return m


@njit(cache=kernel_flags.CACHE, fastmath=kernel_flags.FASTMATH)
def _hst_loop(
    slots: np.ndarray,
    x: np.ndarray,
    score: bool,
    learn: bool,
    feature: np.ndarray,
    threshold: np.ndarray,
    height: int,
    window_size: int,
    leaf: np.ndarray,
    table: np.ndarray,
    counter: np.ndarray,
    first_window: np.ndarray,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled; covered by the NUMBA_DISABLE_JIT leg
    n_trees = feature.shape[0]
    n_inner = (1 << height) - 1
    size_limit = 0.1 * window_size
    node = np.zeros(n_trees, np.int64)
    scratch = np.empty(2 * n_inner + 1, np.int64)
    for i in range(slots.shape[0]):
        s = slots[i]
        # The trees walk level by level in lockstep: each walk is a chain of dependent loads
        # (node -> feature -> value -> child) over the shared trees only, and interleaving ten
        # independent chains lets the CPU overlap them. A slot's state is touched once per tree:
        # the reached leaf's count (learning window) and its precomputed score (reference window).
        for t in range(n_trees):
            node[t] = 0
        for depth in range(height):
            for t in range(n_trees):
                nd = node[t]
                v = x[i, feature[t, nd]]
                left = 2 * nd + 1
                if v != v:  # missing feature: River's KeyError branch, heavier child
                    ml = _subtree_mass(leaf[s], t, left, depth + 1, height)
                    mr = _subtree_mass(leaf[s], t, left + 1, depth + 1, height)
                    node[t] = left + 1 if ml < mr else left
                else:
                    node[t] = left + (v >= threshold[t, nd])
        if score:
            if first_window[s]:
                out[i] = -1
            else:
                # Integer mass, exact; the wrapper divides outside numba (fastmath's arcp would
                # turn the division into a reciprocal multiply, one ulp off River's score).
                total = 0
                for t in range(n_trees):
                    total += table[s, t, node[t] - n_inner]
                out[i] = total
        if learn:
            for t in range(n_trees):
                leaf[s, t, node[t] - n_inner] += 1
            counter[s] += 1
            if counter[s] == window_size:
                # The learning window becomes the reference: its leaf scores, then a fresh window.
                _leaf_table(leaf[s], height, size_limit, scratch, table[s])
                leaf[s] = 0
                first_window[s] = False
                counter[s] = 0


class HalfSpaceTrees(SlotStateful):
    """Half-Space Trees over ``n_features`` numeric features, one set of masses per slot.

    Parameters as River's ``HalfSpaceTrees`` (``limits`` is a list of (low, high) per feature,
    default (0, 1)). All slots share the same random trees; each slot has its own masses and
    window, so one call scores many vehicles. Differences from River, tested: features are
    positions, not names (feature i is River's i-th name in sorted order); NaN means "missing"
    (River's absent key: walk to the heavier child), where River would compare NaN and go right.
    ``seed=None`` draws a seed once and keeps it, so the state restores to the same trees.
    """

    kind = "half_space_trees"

    def __init__(
        self,
        n_features: int,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        limits: Sequence[tuple[float, float]] | None = None,
        seed: int | None = None,
        n_slots: int = 1,
    ) -> None:
        if n_features < 1 or n_trees < 1 or height < 1 or window_size < 1:
            raise ValueError("n_features, n_trees, height and window_size must be >= 1")
        self.n_features = n_features
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.limits = limits
        self.seed = seed
        lims = [(0.0, 1.0)] * n_features if limits is None else [tuple(lim) for lim in limits]
        if len(lims) != n_features:
            raise ValueError(f"limits has {len(lims)} entries for {n_features} features")
        self._seed = seed if seed is not None else random.randrange(2**32)
        self.feature, self.threshold = build_trees(n_trees, height, lims, self._seed)  # type: ignore[arg-type]
        n_leaves = 2**height
        # A leaf count never exceeds the window, a leaf's score window * (2**(height+1) - 1):
        # the smallest integers that hold them, so a slot's state stays small and cache-resident.
        cdt = np.int16 if window_size <= np.iinfo(np.int16).max else np.int32
        tdt = np.int32 if window_size * (2 * n_leaves - 1) <= np.iinfo(np.int32).max else np.int64
        self.state = SlotState(
            self.kind,
            {"n_features": n_features, "n_trees": n_trees, "height": height,
             "window_size": window_size, "limits": None if limits is None else [list(x) for x in lims],
             "seed": self._seed},
            {
                # Learning window: samples per leaf (a node's mass is the sum under it).
                "leaf": np.zeros((n_slots, n_trees, n_leaves), cdt),
                # Reference window: River's score of each leaf's path, made when the window ends.
                "table": np.zeros((n_slots, n_trees, n_leaves), tdt),
                "counter": np.zeros(n_slots, np.int64),
                "first_window": np.ones(n_slots, np.bool_),
            },
            fill={"first_window": 1.0},
        )  # fmt: skip

    def _run(self, slots: Any, x: Any, score: bool, learn: bool) -> np.ndarray:
        s, v, _t = as_batch(slots, x, n_features=self.n_features)
        if s.size:
            self.state.ensure(int(s.max()) + 1)
        mass = np.zeros(s.shape[0], np.int64)
        st = self.state
        _hst_loop(
            s, v, score, learn, self.feature, self.threshold, self.height, self.window_size,
            st["leaf"], st["table"], st["counter"], st["first_window"], mass,
        )  # fmt: skip
        # Normalise and flip as River: 1 - mass / max mass; 0 during the first window (-1 mark).
        max_score = float(self.n_trees * self.window_size * (2 ** (self.height + 1) - 1))
        return np.where(mass < 0, 0.0, 1.0 - mass / max_score)

    @classmethod
    def from_bytes(cls, data: bytes) -> HalfSpaceTrees:
        """Restore a state blob, including those of the two earlier layouts (full per-node masses:
        ``l_mass``/``r_mass``, or ``mass`` pairs with ``ref``): converted exactly, since a
        window's masses are fixed by its leaf counts."""
        st = SlotState.from_bytes(data, cls.kind)
        det = cls(**st.params, n_slots=0)
        a = st.arrays
        pair = None
        if {"l_mass", "r_mass"} <= a.keys() and "mass" not in a:
            pair = (a.pop("r_mass"), a.pop("l_mass"))
        elif {"mass", "ref"} <= a.keys():
            mass, ref = a.pop("mass"), a.pop("ref")
            if mass.ndim != 4 or mass.shape[-1] != 2 or ref.shape != mass.shape[:1]:
                raise DecodeError(f"half_space_trees state has mass {mass.shape}, ref {ref.shape}")
            rows = np.arange(mass.shape[0])
            r = ref.astype(np.int64)
            pair = (mass[rows, ..., r], mass[rows, ..., 1 - r])
        if pair is not None:
            r_mass, l_mass = pair
            n_leaves = 2**det.height
            if r_mass.ndim != 3 or r_mass.shape[1:] != (det.n_trees, 2 * n_leaves - 1):
                raise DecodeError(f"half_space_trees state has masses of shape {r_mass.shape}")
            leaf = det.state["leaf"].dtype
            table = np.zeros((r_mass.shape[0], det.n_trees, n_leaves), det.state["table"].dtype)
            scratch = np.empty(2 * n_leaves - 1, np.int64)
            for slot in range(r_mass.shape[0]):
                _leaf_table(
                    np.ascontiguousarray(r_mass[slot, :, n_leaves - 1 :]),
                    det.height, 0.1 * det.window_size, scratch, table[slot],
                )  # fmt: skip
            st.arrays = {
                "leaf": np.ascontiguousarray(l_mass[:, :, n_leaves - 1 :]).astype(leaf),
                "table": table,
                **{n: v for n, v in a.items() if n not in ("leaf", "table")},
            }
            for n in ("l_mass", "r_mass", "mass", "ref"):
                st.fill.pop(n, None)
            st.fill.update({"leaf": 0.0, "table": 0.0})
        if st.arrays.keys() != det.state.arrays.keys():
            raise DecodeError(f"half_space_trees state has arrays {sorted(st.arrays)}")
        det.state = st
        return det

    def score_learn_many(self, slots: Any, x: Any, ts: Any = None) -> np.ndarray:
        """Score each row against its slot's reference window, then learn it (batch order)."""
        return self._run(slots, x, True, True)

    def score_many(self, slots: Any, x: Any) -> np.ndarray:
        return self._run(slots, x, True, False)

    def learn_many(self, slots: Any, x: Any) -> None:
        self._run(slots, x, False, True)

    def learn_one(self, x: Any, slot: int = 0) -> None:
        self._run([slot], np.asarray(x, np.float64).reshape(1, -1), False, True)

    def score_one(self, x: Any, slot: int = 0) -> float:
        return float(self._run([slot], np.asarray(x, np.float64).reshape(1, -1), True, False)[0])


def hst_numpy(
    x: np.ndarray, feature: np.ndarray, threshold: np.ndarray, height: int, window_size: int
) -> np.ndarray:
    """Vectorised NumPy baseline: ``x`` is (steps, slots, features); all slots and trees at once."""
    steps, n_slots, _ = x.shape
    n_trees, n_nodes = feature.shape
    l_mass = np.zeros((n_slots, n_trees, n_nodes), np.int64)
    r_mass = np.zeros_like(l_mass)
    si = np.arange(n_slots)[:, None]
    ti = np.arange(n_trees)[None, :]
    max_score = float(n_trees * window_size * (2 ** (height + 1) - 1))
    out = np.zeros((steps, n_slots))
    for step in range(steps):
        xs = x[step]
        if step >= window_size:
            node = np.zeros((n_slots, n_trees), np.int64)
            total = np.zeros((n_slots, n_trees), np.int64)
            alive = np.ones((n_slots, n_trees), np.bool_)
            for depth in range(height + 1):
                r = r_mass[si, ti, node]
                total += np.where(alive, r << depth, 0)
                if depth == height:
                    break
                alive &= r >= 0.1 * window_size
                v = xs[si, feature[ti, node]]
                node = 2 * node + 1 + (v >= threshold[ti, node])
            out[step] = 1.0 - total.sum(axis=1) / max_score
        node = np.zeros((n_slots, n_trees), np.int64)
        for _ in range(height):
            l_mass[si, ti, node] += 1
            v = xs[si, feature[ti, node]]
            node = 2 * node + 1 + (v >= threshold[ti, node])
        l_mass[si, ti, node] += 1
        if (step + 1) % window_size == 0:
            r_mass[:] = l_mass
            l_mass[:] = 0
    return out
