"""Labelled photos made harder: rolled, yawed, shrunk, blurred, smeared, darkened, re-compressed.

``carpulse eval plates --perturb K`` reads ``K`` variants of every labelled photo besides the photo
itself: real plates (the real font, real paint and dirt) under the camera geometry and light a
gate may add. The plate's position is unknown, so the whole frame is changed; the variants are
deterministic from ``(seed, photo name, k)``.
"""

from __future__ import annotations

import zlib

import cv2
import numpy as np

# The variants' largest roll either way, in degrees, unless ``--perturb-roll`` says otherwise.
DEFAULT_ROLL = 15.0


def perturbed(
    image: np.ndarray,
    name: str,
    k: int,
    seed: int = 0,
    max_roll: float = DEFAULT_ROLL,
    frame: int = 0,
    grey: bool = False,
) -> tuple[np.ndarray, dict[str, float]]:
    """Variant ``k`` of ``image`` and its conditions (the keys of the synthetic sets' labels),
    rolled by up to ``max_roll`` degrees either way; with ``frame``, pasted at a random place into
    a grey frame that many pixels wide (16:9, at least the variant's size): a wide-angle gate camera
    of higher resolution; with ``grey``, monochrome (its luminance in all three channels), as an
    infrared night camera sees it. The other draws depend on none of them."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8")), k])
    h, w = image.shape[:2]
    img: np.ndarray = image.astype(np.float32)
    # Yaw: one side of the frame shorter, as a camera off to that side sees it.
    tilt = float(rng.uniform(0.0, 0.35))
    side = 1 if rng.random() < 0.5 else 0
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float32)
    dst = src.copy()
    far = [1, 2] if side else [0, 3]
    dst[far[0], 1] += h * tilt / 2
    dst[far[1], 1] -= h * tilt / 2
    m = cv2.getPerspectiveTransform(src, dst)
    img = cv2.warpPerspective(
        img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    # Roll about the centre.
    angle = float(rng.uniform(-max_roll, max_roll))
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    img = cv2.warpAffine(img, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    night = rng.random() < 0.25
    if night:
        img = img * float(rng.uniform(0.3, 0.5))
    blur = float(rng.uniform(0.3, 1.5)) if rng.random() < 0.5 else 0.0
    if blur:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    motion = int(rng.integers(3, 8)) if rng.random() < 0.2 else 0
    if motion:
        img = cv2.filter2D(img, -1, np.full((1, motion), 1.0 / motion, np.float32))
    noise = float(rng.uniform(0.0, 6.0))
    img += rng.normal(0.0, noise, img.shape).astype(np.float32)
    scale = float(rng.uniform(0.6, 1.0))
    small = cv2.resize(
        np.clip(img, 0, 255).astype(np.uint8),
        (max(1, round(w * scale)), max(1, round(h * scale))),
        interpolation=cv2.INTER_AREA,
    )
    quality = int(rng.integers(50, 91))
    ok, buf = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
    if frame > 0:
        out = _framed(out if out is not None else small, frame, rng)
    conditions = {
        "angle": round(angle, 2),
        "tilt": round(tilt, 3),
        "scale": round(scale, 3),
        "blur": round(blur, 2),
        "motion_px": float(motion),
        "noise": round(noise, 2),
        "night": float(night),
        "jpeg_quality": float(quality),
    }
    if frame > 0:
        conditions["frame_px"] = float(frame)
    result = np.asarray(out) if out is not None else small
    if grey:
        conditions["grey"] = 1.0
        result = cv2.cvtColor(cv2.cvtColor(result, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return result, conditions


def _framed(image: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray:
    """``image`` at a random place in a noisy grey frame ``width`` px wide (16:9, never smaller
    than ``image``)."""
    h, w = image.shape[:2]
    fw, fh = max(width, w), max(width * 9 // 16, h)
    grey = float(image.mean())
    out = np.clip(rng.normal(grey, 8.0, (fh, fw, 3)), 0, 255).astype(np.uint8)
    y, x = int(rng.integers(0, fh - h + 1)), int(rng.integers(0, fw - w + 1))
    out[y : y + h, x : x + w] = image
    return out
