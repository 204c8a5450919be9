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
def _hst_loop(
    slots: np.ndarray,
    x: np.ndarray,
    score: bool,
    learn: bool,
    feature: np.ndarray,
    threshold: np.ndarray,
    height: int,
    window_size: int,
    mass: np.ndarray,
    ref: np.ndarray,
    counter: np.ndarray,
    first_window: np.ndarray,
    out: np.ndarray,
) -> None:
    n_trees = feature.shape[0]
    size_limit = 0.1 * window_size
    node = np.zeros(n_trees, np.int64)
    live = np.zeros(n_trees, np.int64)  # 1 while the score walk still counts (branch-free)
    for i in range(slots.shape[0]):
        s = slots[i]
        scoring = score and not first_window[s]
        if score and not scoring:
            out[i] = -1
        total = 0
        rh = ref[s]  # which half of a node's pair is the reference window's mass
        lh = 1 - rh
        # The trees walk level by level in lockstep: each walk is a chain of dependent loads
        # (node -> feature -> value -> child), and interleaving ten independent chains lets the
        # CPU overlap them. One walk serves both River's score walk and its learn walk (they pick
        # the same children: the learn walk bumps a node before reading its children's masses),
        # so scoring reads r_mass until the walk stops counting and learning bumps l_mass.
        for t in range(n_trees):
            node[t] = 0
            live[t] = 1 if scoring else 0
        depth_pow = 1
        for _ in range(height):
            for t in range(n_trees):
                nd = node[t]
                r = mass[s, t, nd, rh]
                lv = live[t]
                total += r * depth_pow * lv
                live[t] = lv & (r >= size_limit)
                if learn:
                    mass[s, t, nd, lh] += 1
                v = x[i, feature[t, nd]]
                left = 2 * nd + 1
                if v != v:  # missing feature: River's KeyError branch, heavier child
                    heavier = mass[s, t, left, lh] < mass[s, t, left + 1, lh]
                    node[t] = left + 1 if heavier else left
                else:
                    node[t] = left + (v >= threshold[t, nd])
            depth_pow *= 2
        for t in range(n_trees):
            total += mass[s, t, node[t], rh] * depth_pow * live[t]
            if learn:
                mass[s, t, node[t], lh] += 1
        if scoring:
            # Integer mass, exact; the wrapper divides outside numba (fastmath's arcp would
            # turn the division into a reciprocal multiply, one ulp off River's score).
            out[i] = total
        if learn:
            counter[s] += 1
            if counter[s] == window_size:
                # The learning half becomes the reference: flip which half is which, no copy.
                ref[s] = lh
                mass[s, :, :, rh] = 0
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
        n_nodes = self.feature.shape[1]
        # A node's mass never exceeds the window: 16-bit counts halve the bytes the walks touch.
        mdt = np.int16 if window_size <= np.iinfo(np.int16).max else np.int32
        self.state = SlotState(
            self.kind,
            {"n_features": n_features, "n_trees": n_trees, "height": height,
             "window_size": window_size, "limits": None if limits is None else [list(x) for x in lims],
             "seed": self._seed},
            {
                # Per node its (reference, learning) masses side by side: the fused walk reads one
                # and bumps the other, so both sit in the same cache line.
                "mass": np.zeros((n_slots, n_trees, n_nodes, 2), mdt),
                "ref": np.zeros(n_slots, np.int64),
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
            st["mass"], st["ref"], st["counter"], st["first_window"], mass,
        )  # fmt: skip
        # Normalise and flip as River: 1 - mass / max mass; 0 during the first window (-1 mark).
        max_score = float(self.n_trees * self.window_size * (2 ** (self.height + 1) - 1))
        return np.where(mass < 0, 0.0, 1.0 - mass / max_score)

    @classmethod
    def from_bytes(cls, data: bytes) -> HalfSpaceTrees:
        """Restore a state blob, including one saved before the masses were paired (``l_mass`` and
        ``r_mass`` arrays): it is converted, the reference masses in half 0."""
        st = SlotState.from_bytes(data, cls.kind)
        det = cls(**st.params, n_slots=0)
        if "mass" not in st.arrays and {"l_mass", "r_mass"} <= st.arrays.keys():
            lm, rm = st.arrays.pop("l_mass"), st.arrays.pop("r_mass")
            mass = np.stack([rm, lm], axis=-1).astype(det.state["mass"].dtype)
            st.arrays = {"mass": mass, "ref": np.zeros(mass.shape[0], np.int64), **st.arrays}
            st.fill.update({"mass": 0.0, "ref": 0.0})
            st.fill.pop("l_mass", None)
            st.fill.pop("r_mass", None)
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
