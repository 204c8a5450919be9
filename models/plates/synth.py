"""Synthetic gate photos: plates of every kind rendered with a CJK font, then rotated, tilted, blurred, darkened.

Deterministic from ``(seed, index)``: image ``i`` of seed ``s`` is the same whatever ``n`` is, so a
TUNE seed range and a TEST seed range never share an image. Nothing is downloaded: the font is the
system's Noto Sans CJK (Debian ``fonts-noto-cjk``) and backgrounds are drawn from the random state.
``carpulse plates synth --out DIR --n 300 --seed 1`` writes ``DIR/*.jpg`` and ``DIR/labels.json`` in
the format ``carpulse eval plates`` reads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.errors import ConfigError
from models.plates.syntax import DIGITS, KINDS, NEV_LETTERS, RED_CHARS

FONT_CANDIDATES = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
)
SC_INDEX = 2  # Noto Sans/Serif CJK SC inside their .ttc collections (other collections: face 0)
GLYPH_H = 96  # glyphs are rendered once at this height, then squeezed into plate cells
PLATE_H = 140  # a single-row plate is 440 x 140 mm: rendered at 1 px per mm
SCENE = (640, 480)
EMPTY_SHARE = 0.05  # photos without a plate (a car body and clutter only)

# Plate colours (RGB): background, text, and the red used for 警, 使, 应急, WJ.
BG = {
    "blue": (18, 62, 190),
    "yellow": (240, 190, 20),
    "white": (236, 238, 236),
    "black": (18, 18, 20),
}
RED = (200, 24, 24)

# Plates GA 36 draws in two rows: (kind, colour, width and height in mm). The rear plates of
# lorries and buses and trailers' plates are 440 x 220; motorcycles' 220 x 140 (ordinary ones
# yellow, light ones blue, coaches' yellow with 学, police white with a red 警). The first two
# characters (province and letter) make the top row, the rest the bottom one.
TWO_ROW = (
    ("ordinary", "yellow", (440, 220)),
    ("trailer", "yellow", (440, 220)),
    ("ordinary", "yellow", (220, 140)),
    ("ordinary", "blue", (220, 140)),
    ("coach", "yellow", (220, 140)),
    ("police", "white", (220, 140)),
)


@dataclass(frozen=True, slots=True)
class Sample:
    """One synthetic photo: the BGR image, its plate text and kind, and the conditions applied."""

    image: np.ndarray
    text: str
    kind: str
    conditions: dict[str, float]
    # The plate's corners in the image (TL, TR, BR, BL), float32 4 x 2; None without a plate.
    quad: np.ndarray | None = None


def font_path() -> Path:
    """The CJK font used for rendering; a clear error if fonts-noto-cjk is missing."""
    for cand in FONT_CANDIDATES:
        if Path(cand).exists():
            return Path(cand)
    try:  # another install location
        out = subprocess.run(
            ["fc-match", "-f", "%{file}", "Noto Sans CJK SC:bold"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except OSError:
        out = ""
    if out and Path(out).exists() and "CJK" in out:
        return Path(out)
    raise ConfigError("no CJK font found: apt-get install fonts-noto-cjk")


# Fonts chosen by ``use_font`` (default: ``font_path()``): CJK glyphs from the first, and with a
# second one, letters and digits from it.
_FONTS: list[Path] = []


def use_font(cjk: Path | None, latin: Path | None = None) -> None:
    """Render plates with ``cjk`` (a .ttc/.otf/.ttf with Chinese glyphs; None: the default font),
    and letters and digits with ``latin`` when given. For test sets in a font the recognisers were
    not trained on (real plates use GA 36's own font, which no package ships)."""
    for f in (cjk, latin):
        if f is not None and not Path(f).is_file():
            raise ConfigError(f"font {f} does not exist")
    _FONTS[:] = [] if cjk is None else [Path(cjk)] + ([Path(latin)] if latin is not None else [])


def _glyph(ch: str) -> np.ndarray:
    """Coverage mask (0..255) of one character, cropped to its ink, in the font in use."""
    if not _FONTS:
        return _glyph_in(ch, str(font_path()))
    use = _FONTS[1] if len(_FONTS) > 1 and ch.isascii() else _FONTS[0]
    return _glyph_in(ch, str(use))


def _face_index(path: Path) -> int:
    """The face to draw from: the SC face of Noto's CJK collections, else the first one (the
    WenQuanYi and AR PL collections have two to four faces whose simplified glyphs agree)."""
    return SC_INDEX if path.suffix == ".ttc" and "CJK" in path.name else 0


@lru_cache(maxsize=4096)
def _glyph_in(ch: str, path_name: str) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    path = Path(path_name)
    try:
        font = ImageFont.truetype(str(path), GLYPH_H, index=_face_index(path))
    except OSError as err:
        raise ConfigError(f"cannot load font {path}: {err}") from err
    img = Image.new("L", (GLYPH_H * 2, GLYPH_H * 2), 0)
    ImageDraw.Draw(img).text((GLYPH_H // 2, GLYPH_H // 4), ch, fill=255, font=font)
    arr = np.asarray(img)
    ys, xs = np.nonzero(arr > 20)
    if ys.size == 0:
        raise ConfigError(f"font {path} has no glyph for {ch!r}")
    return arr[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].copy()


def random_text(kind: str, rng: np.random.Generator) -> str:
    """A valid number of ``kind`` (serials lean to digits, as issued plates do)."""
    templates = next(ts for k, _, ts in KINDS if k == kind)
    template = templates[int(rng.integers(len(templates)))]
    out = []
    for allowed in template:
        if len(allowed) > 10 and allowed != NEV_LETTERS and rng.random() < 0.6:
            digits = [c for c in allowed if c in DIGITS]
            if digits and len(digits) < len(allowed):
                allowed = "".join(digits)
        out.append(allowed[int(rng.integers(len(allowed)))])
    return "".join(out)


def render_plate(text: str, kind: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """An upright plate (BGR) in the kind's colours: 440 x 140 for 7 characters, 480 x 140 for 8."""
    colour = next(c for k, c, _ in KINDS if k == kind)
    n = len(text)
    width = 440 if n <= 7 else 480
    plate = np.zeros((PLATE_H, width, 3), dtype=np.float32)
    ink: tuple[int, int, int]
    if colour == "green":  # white-to-green gradient (small) or yellow-green (large)
        top = np.array((245, 250, 245) if kind.endswith("small") else (200, 220, 60), np.float32)
        bottom = np.array((60, 190, 90), np.float32)
        t = np.linspace(0, 1, PLATE_H, dtype=np.float32)[:, None, None]
        plate[:] = top * (1 - t) + bottom * t
        ink = (10, 10, 10)
    else:
        plate[:] = BG[colour]
        ink = (245, 245, 245) if colour in ("blue", "black") else (12, 12, 12)
    reds = {p % n for p in RED_CHARS.get(kind, ())}
    # Border line, 3 px inside the edge.
    cv2.rectangle(plate, (5, 5), (width - 6, PLATE_H - 6), ink, 2)
    # Characters in equal cells, with the separator dot after the second (GA 36 layout).
    margin, gap = 16, 20 if n <= 7 else 12
    cell_w = (width - 2 * margin - gap - (n - 1) * 6) / n
    x = float(margin)
    for p, ch in enumerate(text):
        if p == 2:
            cx = int(x + gap / 2 - 3)
            cv2.circle(plate, (cx, PLATE_H // 2), 5, ink, -1)
            x += gap
        mask = _glyph(ch).astype(np.float32) / 255.0
        cw = int(cell_w)
        ch_h = 90
        ascii_narrow = ch.isascii() and ch in "1"
        gw = max(4, int(cw * (0.45 if ascii_narrow else 1.0)))
        glyph = cv2.resize(mask, (gw, ch_h), interpolation=cv2.INTER_AREA)
        x0 = int(x + (cw - gw) / 2)
        y0 = (PLATE_H - ch_h) // 2
        col = np.array(RED if p in reds else ink, np.float32)
        region = plate[y0 : y0 + ch_h, x0 : x0 + gw]
        a = glyph[:, : region.shape[1], None]
        region[:] = region * (1 - a) + col * a
        x += cell_w + 6
    if rng is not None:  # dirt and wear: grain and a few smudges
        plate = _worn(plate, rng, 4, (8, 40, 5, 20))
    return cv2.cvtColor(np.clip(plate, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


def _worn(
    plate: np.ndarray, rng: np.random.Generator, most: int, axes: tuple[int, int, int, int]
) -> np.ndarray:
    """``plate`` (float32 RGB) with grain and up to ``most - 1`` smudges, ellipses whose half-axes
    are drawn from ``axes`` = (long low, long high, short low, short high)."""
    height, width = plate.shape[:2]
    plate = plate + rng.normal(0, 4, plate.shape).astype(np.float32)
    for _ in range(int(rng.integers(0, most))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        size = (int(rng.integers(axes[0], axes[1])), int(rng.integers(axes[2], axes[3])))
        smudge = plate.copy()
        cv2.ellipse(smudge, centre, size, float(rng.uniform(0, 180)), 0, 360, (90, 80, 60), -1)
        alpha = float(rng.uniform(0.15, 0.45))
        plate = plate * (1 - alpha) + smudge * alpha
    return plate


def _draw_glyph(
    plate: np.ndarray, ch: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]
) -> None:
    """Blend ``ch`` into ``plate`` (float32 RGB) filling ``box`` = (x, y, width, height)."""
    x0, y0, gw, gh = box
    if ch.isascii() and ch in "1":  # a narrow digit keeps its width
        x0, gw = x0 + int(gw * 0.275), max(4, int(gw * 0.45))
    glyph = cv2.resize(
        _glyph(ch).astype(np.float32) / 255.0, (gw, gh), interpolation=cv2.INTER_AREA
    )
    region = plate[y0 : y0 + gh, x0 : x0 + gw]
    a = glyph[: region.shape[0], : region.shape[1], None]
    region[:] = region * (1 - a) + np.array(colour, np.float32) * a


def render_two_row(
    text: str,
    kind: str,
    colour: str,
    size: tuple[int, int],
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """An upright two-row plate (BGR) of ``size`` mm (1 px per mm): the first two characters
    small in the top row with a dot between them, the others large in the bottom row."""
    width, height = size
    plate = np.zeros((height, width, 3), dtype=np.float32)
    plate[:] = BG[colour]
    ink = (245, 245, 245) if colour in ("blue", "black") else (12, 12, 12)
    n = len(text)
    reds = {p % n for p in RED_CHARS.get(kind, ())}
    cv2.rectangle(plate, (4, 4), (width - 5, height - 5), ink, 2)
    # Top row: two characters about a quarter of the height, centred, a dot between them.
    th = int(0.27 * height)
    tw = int(0.8 * th) if width < 300 else int(0.75 * th)
    gap = int(0.5 * tw)
    left = (width - 2 * tw - gap) // 2
    ty = int(0.07 * height)
    for p, x in ((0, left), (1, left + tw + gap)):
        _draw_glyph(plate, text[p], (x, ty, tw, th), RED if p in reds else ink)
    cv2.circle(plate, (left + tw + gap // 2, ty + th // 2), max(2, gap // 5), ink, -1)
    # Bottom row: the rest, about half the height, across the plate.
    rest = text[2:]
    bh = int(0.5 * height)
    by = int(0.42 * height)
    margin = int(0.06 * width)
    step = (width - 2 * margin) / len(rest)
    bw = int(step * 0.86)
    for q, ch in enumerate(rest):
        x = int(margin + q * step + (step - bw) / 2)
        _draw_glyph(plate, ch, (x, by, bw, bh), RED if q + 2 in reds else ink)
    if rng is not None:  # dirt and wear, as on one-row plates
        plate = _worn(plate, rng, 3, (6, 30, 4, 15))
    return cv2.cvtColor(np.clip(plate, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)


def degraded_plate(
    plate: np.ndarray,
    rng: np.random.Generator,
    width_px: tuple[float, float] = (50, 320),
    night: tuple[float, float] = (0.2, 0.45),
    haze_max: float = 0.4,
    jpeg: tuple[int, int] = (55, 96),
) -> tuple[np.ndarray, float, float]:
    """A rendered plate on a plain margin, shrunk to ``width_px`` wide, then darkened, hazed,
    blurred, smeared, grained and JPEG-compressed at random, as gate photos are; returns
    ``(BGR image, margin in plate pixels, scale)`` (the plate's corner ``(x, y)`` is at
    ``(margin + x) * scale``). The training crops of the province classifier and the line model.
    """
    plate = plate.astype(np.float32)
    ph, pw = plate.shape[:2]
    pad = int(0.3 * ph)
    canvas = np.empty((ph + 2 * pad, pw + 2 * pad, 3), np.float32)
    canvas[:] = rng.uniform(0, 255, 3)
    canvas[pad : pad + ph, pad : pad + pw] = plate
    scale = float(rng.uniform(*width_px)) / pw
    small: np.ndarray = np.asarray(
        cv2.resize(canvas, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), np.float32
    )
    if rng.random() < 0.25:  # night
        small *= rng.uniform(*night)
    if rng.random() < 0.3:  # haze
        haze = rng.uniform(0, haze_max)
        small = np.asarray(small * (1 - haze) + 128 * haze, np.float32)
    if rng.random() < 0.6:
        small = np.asarray(
            cv2.GaussianBlur(small, (0, 0), float(rng.uniform(0.3, 1.8))), np.float32
        )
    if rng.random() < 0.2:
        k = int(rng.integers(3, 10))
        small = np.asarray(
            cv2.filter2D(small, -1, np.full((1, k), 1.0 / k, np.float32)), np.float32
        )
    small += np.asarray(rng.normal(0, rng.uniform(0, 10), small.shape), np.float32)
    img: np.ndarray = np.clip(small, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(*jpeg))])
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
    if decoded is not None:
        img = np.asarray(decoded)
    return img, float(pad), scale


def _background(rng: np.random.Generator) -> np.ndarray:
    w, h = SCENE
    base = rng.uniform(40, 200, 3)
    grad = np.linspace(0.6, 1.2, h, dtype=np.float32)[:, None, None]
    img = np.clip(np.ones((h, w, 3), np.float32) * base * grad, 0, 255)
    for _ in range(int(rng.integers(3, 9))):  # clutter: walls, cars, signs, road marks
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(20, 300)), y0 + int(rng.integers(10, 200))
        cv2.rectangle(img, (x0, y0), (x1, y1), rng.uniform(0, 255, 3).tolist(), -1)
    for _ in range(int(rng.integers(2, 6))):
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(img, p0, p1, rng.uniform(0, 255, 3).tolist(), int(rng.integers(1, 6)))
    blurred: np.ndarray = cv2.GaussianBlur(img, (0, 0), 1.0)
    return blurred.astype(np.uint8)


def make_sample(
    seed: int, index: int, kinds: tuple[str, ...] | None = None, two_row: float = 0.0
) -> Sample:
    """Image ``index`` of seed ``seed``: a car-like body with one plate under random conditions.

    ``two_row``: the share of two-row plates (``TWO_ROW``, of ``kinds`` when given); at 0 (the
    default) no random number is drawn for it, so the images of every seed are those of earlier
    versions."""
    if not 0.0 <= two_row <= 1.0:  # NaN too
        raise ConfigError(f"two_row {two_row}: a share between 0 and 1")
    rng = np.random.default_rng([seed, index])
    names = kinds or tuple(k for k, _, _ in KINDS)
    kind = names[int(rng.integers(len(names)))]
    layout = None
    layouts = [t for t in TWO_ROW if kinds is None or t[0] in kinds]
    if two_row > 0.0 and layouts:  # its own random stream: the rest is drawn as before
        pick = np.random.default_rng([seed, index, 2])
        if pick.random() < two_row:
            layout = layouts[int(pick.integers(len(layouts)))]
            kind = layout[0]
    text = random_text(kind, rng)
    if layout is not None:
        plate = render_two_row(text, kind, layout[1], layout[2], rng)
    else:
        plate = render_plate(text, kind, rng)
    scene = _background(rng)
    if kinds is None and rng.random() < EMPTY_SHARE:  # an empty lot: false positives count
        kind, text = "none", ""
    w, h = SCENE
    # A car body the plate hangs on (paint of any colour, blue cars included).
    pw = float(rng.uniform(90, 300))  # plate width in the photo
    if plate.shape[1] < 400:  # a motorcycle's plate is half as wide
        pw *= plate.shape[1] / 440
    ph = pw * plate.shape[0] / plate.shape[1]
    cx, cy = rng.uniform(pw * 0.7, w - pw * 0.7), rng.uniform(h * 0.35, h - ph * 1.5)
    body = rng.uniform(0, 255, 3).tolist()
    cv2.rectangle(
        scene,
        (int(cx - pw * 1.4), int(cy - ph * 3)),
        (int(cx + pw * 1.4), int(cy + ph * 1.4)),
        body,
        -1,
    )
    angle = float(rng.uniform(-25, 25))  # roll
    tilt = float(rng.uniform(0, 0.45))  # yaw: one side nearer than the other
    pitch = float(rng.uniform(0, 0.2))  # camera above the plate: the bottom edge nearer
    side = 1 if rng.random() < 0.5 else -1
    src = np.array(
        [[0, 0], [plate.shape[1], 0], [plate.shape[1], plate.shape[0]], [0, plate.shape[0]]],
        np.float32,
    )
    dx, dy = pw / 2, ph / 2
    corners = np.array([[-dx, -dy], [dx, -dy], [dx, dy], [-dx, dy]], np.float32)
    # Yaw: the far side is shorter and the plate narrower.
    shrink = np.array([1 - tilt if (c[0] > 0) == (side > 0) else 1.0 for c in corners], np.float32)
    corners[:, 1] *= shrink
    corners[:, 0] *= 1 - tilt / 2
    corners[:2, 0] *= 1 - pitch  # top edge shorter
    corners[:, 1] *= 1 - pitch / 2
    corners += rng.normal(0, 0.03 * ph, corners.shape).astype(np.float32)  # a little shear
    rad = np.deg2rad(angle)
    rot = np.array([[np.cos(rad), -np.sin(rad)], [np.sin(rad), np.cos(rad)]], np.float32)
    dst = corners @ rot.T + np.array([cx, cy], np.float32)
    m = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    warped = cv2.warpPerspective(plate, m, SCENE, flags=cv2.INTER_AREA)
    cover = cv2.warpPerspective(np.full(plate.shape[:2], 255, np.uint8), m, SCENE)
    if not text:
        cover[:] = 0
    a = (cover.astype(np.float32) / 255.0)[:, :, None]
    img = scene.astype(np.float32) * (1 - a) + warped.astype(np.float32) * a
    night = bool(rng.random() < 0.25)
    if night:  # dark scene, plate lit by the headlamps of the next car: a glare blob
        img *= rng.uniform(0.2, 0.45)
        gx, gy = rng.uniform(0, w), rng.uniform(0, h)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r = rng.uniform(30, 90)
        img += 230 * np.exp(-((xx - gx) ** 2 + (yy - gy) ** 2) / (2 * r * r))[:, :, None]
    haze = float(rng.uniform(0, 0.4)) if rng.random() < 0.3 else 0.0
    img = img * (1 - haze) + 128 * haze  # fog, a dirty lens: low contrast
    blur = float(rng.uniform(0, 1.8)) if rng.random() < 0.6 else 0.0
    if blur > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    motion = int(rng.integers(3, 10)) if rng.random() < 0.2 else 0
    if motion:  # the car still moving at the barrier
        img = cv2.filter2D(img, -1, np.full((1, motion), 1.0 / motion, np.float32))
    noise = float(rng.uniform(0, 10))
    img += rng.normal(0, noise, img.shape).astype(np.float32)
    scale = float(rng.uniform(0.7, 1.6))  # the camera's resolution
    clipped = np.clip(img, 0, 255).astype(np.uint8)
    out: np.ndarray = cv2.resize(
        clipped, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
    )
    conditions = {
        "angle": round(angle, 2),
        "tilt": round(tilt, 3),
        "plate_width_px": round(pw * scale, 1),
        "pitch": round(pitch, 3),
        "blur": round(blur, 2),
        "motion_px": float(motion),
        "haze": round(haze, 3),
        "noise": round(noise, 2),
        "night": float(night),
        "scale": round(scale, 3),
    }
    conditions["jpeg_quality"] = float(rng.integers(55, 96))
    if two_row > 0.0:
        conditions["two_row"] = float(layout is not None and bool(text))
    quad = (dst * np.array([out.shape[1] / w, out.shape[0] / h])).astype(np.float32)
    return Sample(out, text, kind, conditions, quad if text else None)


def parse_kinds(spec: str) -> tuple[str, ...]:
    """``--kinds``: comma-separated plate kinds of ``syntax.KINDS`` (a clear error otherwise)."""
    return check_kinds([k.strip() for k in spec.split(",") if k.strip()], spec)


def check_kinds(kinds: list[str] | tuple[str, ...], spec: str) -> tuple[str, ...]:
    """``kinds`` without repeats, all of ``syntax.KINDS`` and at least one (else a ConfigError
    naming ``spec``, what the user gave)."""
    known = [k for k, _, _ in KINDS]
    unique = tuple(dict.fromkeys(kinds))
    bad = [k for k in unique if k not in known]
    if not unique or bad:
        raise ConfigError(
            f"--kinds {spec[:80]!r}: {'unknown ' + ', '.join(bad[:5]) if bad else 'no kind'}; "
            f"kinds are {', '.join(known)}"
        )
    return unique


def write_set(
    out: Path, n: int, seed: int, two_row: float = 0.0, kinds: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Write ``n`` images of seed ``seed`` (a ``two_row`` share of two-row plates; only ``kinds``
    when given, and then every image has a plate) and labels.json into ``out``; returns a
    summary."""
    if n < 1 or n > 100_000:
        raise ConfigError(f"--n must be 1..100000, got {n}")
    if not 0.0 <= two_row <= 1.0:
        raise ConfigError(f"--two-row must be a share between 0 and 1, got {two_row}")
    if kinds is not None:
        kinds = check_kinds(kinds, ",".join(kinds))
    out.mkdir(parents=True, exist_ok=True)
    labels: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for i in range(n):
        s = make_sample(seed, i, kinds, two_row=two_row)
        name = f"synth_s{seed}_{i:05d}.jpg"
        quality = int(s.conditions["jpeg_quality"])
        if not cv2.imwrite(str(out / name), s.image, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise ConfigError(f"cannot write {out / name}")
        plates = [{"text": s.text, "confidence": "high", "kind": s.kind}] if s.text else []
        labels[name] = {
            "plates": plates,
            "conditions": s.conditions,
        }
        counts[s.kind] = counts.get(s.kind, 0) + 1
    (out / "labels.json").write_text(
        json.dumps(labels, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    summary: dict[str, Any] = {"out": str(out), "images": n, "seed": seed, "kinds": counts}
    if two_row > 0.0:
        summary["two_row"] = sum(int(v["conditions"]["two_row"]) for v in labels.values())
    return summary


def main(argv: list[str]) -> dict[str, Any]:
    """``carpulse plates synth``."""
    ap = argparse.ArgumentParser(prog="carpulse plates synth", description=__doc__)
    ap.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    ap.add_argument("--n", type=int, default=300, help="number of images")
    ap.add_argument(
        "--seed", type=int, default=1, help="seed (sets of different seeds are disjoint)"
    )
    ap.add_argument(
        "--font",
        type=Path,
        default=None,
        help="render the plates in this CJK font instead of Noto Sans CJK Bold (a font the "
        "recognisers never saw: e.g. /usr/share/fonts/opentype/noto/NotoSerifCJK-Bold.ttc)",
    )
    ap.add_argument(
        "--latin-font",
        type=Path,
        default=None,
        help="letters and digits in this font (with --font)",
    )
    ap.add_argument(
        "--two-row",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="share of two-row plates (lorries' and buses' rear plates, trailers, motorcycles; "
        "0-1, default 0: the images of earlier versions)",
    )
    ap.add_argument(
        "--kinds",
        default=None,
        metavar="K1,K2",
        help="only these plate kinds, comma-separated (e.g. new-energy-small,new-energy-large; "
        "default: every kind, and some photos with no plate)",
    )
    args = ap.parse_args(argv)
    kinds = None if args.kinds is None else parse_kinds(args.kinds)
    if args.latin_font is not None and args.font is None:
        raise ConfigError("--latin-font needs --font")
    use_font(args.font, args.latin_font)
    try:
        summary = write_set(args.out, args.n, args.seed, args.two_row, kinds)
    finally:
        use_font(None)
    if args.font is not None:
        summary["font"] = str(args.font)
        if args.latin_font is not None:
            summary["latin_font"] = str(args.latin_font)
    return summary
