"""Constrained CTC decoding: numba Viterbi over the plate templates against a brute-force reference."""

from __future__ import annotations

import itertools
import os

import numba
import numpy as np
import pytest

from models.plates import decode as dec
from models.plates.decode import PlateDecoder
from models.plates.syntax import is_valid
from tests.unit.vision.ctc import ctc_frames

pytestmark = pytest.mark.kernel

# A tiny alphabet: blank, a few plate characters, one character plates never use, and the dot.
ALPHABET = ["<blank>", "皖", "京", "A", "B", "0", "1", "O", "K", "D", "警", "·", "x", " "]


def _frames(path: list[str], rng: np.random.Generator, peak: float = 0.9) -> np.ndarray:
    """A CTC output that spells ``path`` (one frame per label, '_' = blank) with some noise."""
    return ctc_frames(path, ALPHABET, rng, peak)


def test_greedy_and_constrained_agree_on_a_clean_plate() -> None:
    d = PlateDecoder(ALPHABET)
    rng = np.random.default_rng(0)
    probs = _frames(list("_皖_A_·_1_0_0_K_1_"), rng)
    assert d.greedy(probs) == "皖A·100K1"
    got = d.constrained(probs)
    assert got is not None and got.text == "皖A100K1" and got.confidence > 0.8


def test_constrained_repairs_what_the_syntax_forbids() -> None:
    d = PlateDecoder(ALPHABET)
    rng = np.random.default_rng(1)
    # 'O' where a digit belongs (its mass goes to '0'), and 'x' (not a plate character) at the end
    # with 'K' as the runner-up.
    probs = _frames(list("_皖_A__1_O_0_K_x_"), rng)
    last = len(probs) - 2
    probs[last, ALPHABET.index("K")] = 0.3
    probs[last] /= probs[last].sum()
    assert d.greedy(probs) == "皖A1O0Kx"
    got = d.constrained(probs)
    assert got is not None and is_valid(got.text)
    assert got.text == "皖A100KK"


def test_repeated_characters_need_a_blank_between_them() -> None:
    d = PlateDecoder(ALPHABET)
    rng = np.random.default_rng(2)
    probs = _frames(list("皖_AA_1_1_1_1_1"), rng)  # "AA" without a blank is one A
    got = d.constrained(probs)
    assert got is not None and got.text == "皖A11111"


def _reference(lp: np.ndarray, blank: np.ndarray, mask: np.ndarray, length: int) -> float:
    """Best path score by enumerating every CTC path (tiny sizes only)."""
    n_t, n_c = lp.shape
    best = -np.inf
    for path in itertools.product(range(-1, n_c), repeat=n_t):
        labels, prev = [], -1
        for c in path:
            if c >= 0 and c != prev:
                labels.append(c)
            prev = c
        if len(labels) != length or not all(mask[p, c] for p, c in enumerate(labels)):
            continue
        score = sum(blank[t] if c < 0 else lp[t, c] for t, c in enumerate(path))
        best = max(best, score)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_viterbi_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_t, n_c, length = 6, 3, 3
    raw = rng.dirichlet(np.ones(n_c + 1), size=n_t)
    lp, blank = np.log(raw[:, 1:]), np.log(raw[:, 0])
    mask = rng.random((length, n_c)) < 0.7
    mask[:, 0] = True
    out_cls = np.zeros(length, np.int32)
    out_lp = np.zeros(length)
    got = dec._template_viterbi(lp, blank, mask, length, out_cls, out_lp)
    want = _reference(lp, blank, mask, length)
    assert got == pytest.approx(want, abs=1e-9)
    assert all(mask[p, c] for p, c in enumerate(out_cls.tolist()))


def test_kernel_is_compiled() -> None:
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("JIT disabled")
    PlateDecoder(ALPHABET).constrained(_frames(list("皖A10000"), np.random.default_rng(3)))
    assert isinstance(dec._template_viterbi, numba.core.registry.CPUDispatcher)
    assert dec._template_viterbi.signatures
