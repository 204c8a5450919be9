"""Camera frames via OpenCV: a device index, an RTSP/HTTP URL, a video file or a folder of images; presence gating."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.backoff import Backoff
from core.errors import ConfigError, SourceUnavailableError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded BGR frame, ``ts`` in seconds since the epoch, ``name`` = file or stream name."""

    image: np.ndarray
    ts: float
    index: int
    name: str


def _kind(uri: str) -> str:
    if uri.isdigit():
        return "device"
    if "://" in uri:
        return "stream"
    path = Path(uri)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    return "video"


class Camera:
    """Frames from one source; ``read`` returns ``None`` when a finite source is done.

    Live sources (device, stream, or ``live=True``) raise :class:`SourceUnavailableError` when
    they cannot be opened or stop delivering: the caller reconnects (see :class:`FrameFeed`).
    A corrupt image in a folder is logged (once per file), counted and skipped.
    """

    def __init__(self, uri: str | int, *, live: bool | None = None, name: str = "") -> None:
        self.uri = str(uri)
        self.kind = _kind(self.uri)
        self.live = self.kind in ("device", "stream") if live is None else live
        self.name = name or self.uri
        self._cap: Any = None
        self._files: list[Path] = []
        self._pos = 0
        self.index = 0
        self.corrupt = 0  # unreadable images or empty frames, skipped
        self.exhausted = False

    def __repr__(self) -> str:
        return f"Camera({self.name!r}, {self.kind})"

    def open(self) -> None:
        """Open the source (idempotent); raises ``SourceUnavailableError`` naming it."""
        if self.kind == "folder":
            folder = Path(self.uri)
            if not folder.is_dir():
                raise SourceUnavailableError(f"camera {self.name}: folder {folder} is gone")
            if not self._files:
                self._files = sorted(
                    p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                )
            return
        if self.kind == "image":
            if not Path(self.uri).exists():
                raise SourceUnavailableError(f"camera {self.name}: {self.uri} does not exist")
            self._files = [Path(self.uri)]
            return
        if self._cap is not None:
            return
        if self.kind == "video" and not Path(self.uri).exists():
            raise SourceUnavailableError(f"camera {self.name}: {self.uri} does not exist")
        target: str | int = int(self.uri) if self.kind == "device" else self.uri
        cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            raise SourceUnavailableError(f"camera {self.name}: cannot open {self.uri}")
        self._cap = cap

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def read(self) -> Frame | None:
        """The next frame; ``None`` when a finite source is done (``exhausted``)."""
        if self.exhausted:
            return None
        if self.kind in ("folder", "image"):
            return self._read_file()
        if self._cap is None:
            self.open()
        ok, image = self._cap.read()
        if not ok or image is None or image.size == 0:
            if self.live:
                self.close()
                raise SourceUnavailableError(f"camera {self.name}: no frame from {self.uri}")
            self.exhausted = True
            return None
        self.index += 1
        return Frame(image, time.time(), self.index, self.name)

    def _read_file(self) -> Frame | None:
        while self._pos < len(self._files):
            path = self._files[self._pos]
            self._pos += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None or image.size == 0:
                self.corrupt += 1
                log.warning("camera %s: %s is not a readable image (skipped)", self.name, path)
                continue
            self.index += 1
            return Frame(image, time.time(), self.index, path.name)
        self.exhausted = True
        return None


class FrameFeed:
    """Frames from a camera that may come and go: logged once when it breaks and once when it
    is back, reopened with exponential backoff and jitter, never raising for a lost camera."""

    def __init__(
        self,
        camera: Camera,
        base_s: float = 0.5,
        cap_s: float = 30.0,
        seed: int | None = None,
    ) -> None:
        self.camera = camera
        self.base_s, self.cap_s = base_s, cap_s
        self._backoff = Backoff(base_s, cap_s, jitter="equal", seed=seed)
        self.broken = False
        self.outages = 0
        self.reconnects = 0

    def frames(self, stop: Any = None) -> Iterator[Frame]:
        """Yield frames until the source is exhausted or ``stop`` (a ``threading.Event``) is set."""
        while stop is None or not stop.is_set():
            try:
                self.camera.open()
                frame = self.camera.read()
            except SourceUnavailableError as err:
                if not self.broken:
                    log.warning("%s (reconnecting with backoff)", err)
                    self.broken = True
                    self.outages += 1
                self.camera.close()
                delay = self._backoff.next()
                if stop is not None:
                    stop.wait(delay)
                else:
                    time.sleep(delay)
                continue
            if self.broken:
                log.info("camera %s: frames again", self.camera.name)
                self.broken = False
                self.reconnects += 1
            self._backoff.reset()
            if frame is None:
                return
            yield frame


class PresenceGate:
    """Cheap motion test on a tiny grey copy: only frames that changed go to plate reading.

    A frame is active when more than ``min_changed`` of its pixels differ from the running
    background by more than ``level`` grey levels. Every ``heartbeat_s`` one frame passes anyway,
    so a car that stopped before the camera started is still read.
    """

    def __init__(
        self,
        min_changed: float = 0.01,
        level: int = 25,
        alpha: float = 0.1,
        heartbeat_s: float = 5.0,
        size: tuple[int, int] = (96, 54),
    ) -> None:
        if not 0 <= min_changed <= 1:
            raise ConfigError(f"presence min_changed must be in [0, 1], got {min_changed}")
        self.min_changed, self.level, self.alpha = min_changed, level, alpha
        self.heartbeat_s, self.size = heartbeat_s, size
        self._bg: np.ndarray | None = None
        self._last_pass = -np.inf
        self.active_frames = 0
        self.idle_frames = 0

    def active(self, image: np.ndarray, ts: float) -> bool:
        small = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY).astype(np.float32)
        if self._bg is None:
            self._bg = gray
            changed = 1.0
        else:
            changed = float((np.abs(gray - self._bg) > self.level).mean())
            cv2.accumulateWeighted(gray, self._bg, self.alpha)
        hit = changed > self.min_changed or ts - self._last_pass >= self.heartbeat_s
        if hit:
            self._last_pass = ts
            self.active_frames += 1
        else:
            self.idle_frames += 1
        return hit
