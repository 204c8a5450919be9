"""The fonts plate models are trained in, and the fonts kept out of training for test sets.

Real plates use GA 36's own font, which no package ships, so what a recogniser learnt from one
font says little about a real plate: training plates are drawn in many fonts, and test sets in
fonts no model saw (``carpulse plates synth --font/--latin-font``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from models.plates.synth import font_path, use_font

# Fonts the training plates are drawn in, one pair per plate (those present on the machine: the
# Debian packages fonts-noto-cjk, fonts-wqy-zenhei, fonts-arphic-{uming,ukai,gbsn00lp,gkai00mp},
# fonts-dejavu-core and fonts-liberation). Kept out, so that test sets drawn in them by `carpulse
# plates synth --font` show how the model does on a font it never saw, as a real plate's is:
# Noto Serif CJK, WenQuanYi Micro Hei with Droid Sans Fallback (Micro Hei is drawn from it), and
# the Liberation Sans family (Liberation Sans Narrow is the test sets' Latin font).
NOTO = Path("/usr/share/fonts/opentype/noto")
TTF = Path("/usr/share/fonts/truetype")
TRAIN_CJK = (
    None,  # the synth default, Noto Sans CJK Bold
    NOTO / "NotoSansCJK-Regular.ttc",
    TTF / "wqy/wqy-zenhei.ttc",
    TTF / "arphic/uming.ttc",
    TTF / "arphic/ukai.ttc",
    TTF / "arphic-gbsn00lp/gbsn00lp.ttf",
    TTF / "arphic-gkai00mp/gkai00mp.ttf",
)
TRAIN_LATIN = (
    None,  # the CJK font's own letters and digits
    TTF / "dejavu/DejaVuSans-Bold.ttf",
    TTF / "dejavu/DejaVuSansCondensed-Bold.ttf",
    TTF / "dejavu/DejaVuSansMono-Bold.ttf",
    TTF / "dejavu/DejaVuSerif-Bold.ttf",
    TTF / "liberation/LiberationMono-Bold.ttf",
    TTF / "liberation/LiberationSerif-Bold.ttf",
)
# Test-set fonts (`carpulse plates synth --font/--latin-font`), never drawn in for training.
HELD_OUT_FONTS = (
    NOTO / "NotoSerifCJK-Bold.ttc",
    NOTO / "NotoSerifCJK-Regular.ttc",
    TTF / "wqy/wqy-microhei.ttc",
    TTF / "droid/DroidSansFallbackFull.ttf",
    TTF / "liberation/LiberationSansNarrow-Bold.ttf",
    TTF / "liberation/LiberationSans-Bold.ttf",
)
# The share of training plates drawn wholly in the synth default (the rest: a random pair above).
DEFAULT_FONT_SHARE = 0.3


def training_fonts(seed: int, i: int) -> tuple[Path | None, Path | None]:
    """The font pair of training plate ``i`` (``DEFAULT_FONT_SHARE`` of them the synth default)."""
    rng = np.random.default_rng([seed, i, 17])
    cjk = [f for f in TRAIN_CJK if f is None or f.is_file()]
    latin = [f for f in TRAIN_LATIN if f is None or f.is_file()]
    if rng.random() < DEFAULT_FONT_SHARE:
        return None, None
    c = cjk[int(rng.integers(len(cjk)))]
    la = latin[int(rng.integers(len(latin)))]
    if c is None and la is None:
        return None, None
    return (c if c is not None else font_path()), la


@contextmanager
def drawn_in_training_fonts(seed: int, i: int, on: bool = True) -> Iterator[None]:
    """Plates made inside are drawn in training plate ``i``'s font pair (``on``; else the synth
    default), and the default is back afterwards, whatever happens inside."""
    if not on:
        yield
        return
    use_font(*training_fonts(seed, i))
    try:
        yield
    finally:
        use_font(None)
