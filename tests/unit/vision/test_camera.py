"""Camera sources: corrupt files, empty frames, a live source that vanishes and comes back."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from firmware_bridge.camera import Camera, FrameFeed, PresenceGate


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (60, 80, 3), dtype=np.uint8)


def test_folder_skips_corrupt_files_and_logs_each_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), _image(0))
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "c.png").write_bytes(b"")
    cv2.imwrite(str(tmp_path / "d.png"), _image(1))
    (tmp_path / "notes.txt").write_text("ignored")
    cam = Camera(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        frames = list(FrameFeed(cam).frames())
    assert [f.name for f in frames] == ["a.png", "d.png"]
    assert cam.corrupt == 2 and cam.exhausted
    assert sum("b.jpg" in r.message for r in caplog.records) == 1
    assert sum("c.png" in r.message for r in caplog.records) == 1


def _write_video(path: Path, n: int) -> None:
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (80, 60))
    assert out.isOpened()
    for i in range(n):
        out.write(_image(i))
    out.release()


def test_video_file_replays_then_ends(tmp_path: Path) -> None:
    video = tmp_path / "gate.avi"
    _write_video(video, 5)
    cam = Camera(str(video))
    assert cam.kind == "video" and not cam.live
    assert len(list(FrameFeed(cam).frames())) == 5


def test_live_source_that_vanishes_reconnects_with_backoff(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    video = tmp_path / "cam.avi"
    _write_video(video, 3)
    cam = Camera(str(video), live=True, name="gate-test")
    feed = FrameFeed(cam, base_s=0.02, cap_s=0.05, seed=1)
    stop = threading.Event()
    got: list[int] = []

    def swap_in_later() -> None:
        time.sleep(0.4)  # several failed reopen attempts while the camera is gone
        _write_video(tmp_path / "new.avi", 4)
        (tmp_path / "new.avi").rename(video)

    def consume() -> None:
        for i, frame in enumerate(feed.frames(stop)):
            got.append(frame.image.shape[0])
            if i == 2:
                video.unlink()  # the camera disappears after its last frame
                threading.Thread(target=swap_in_later, daemon=True).start()
            if len(got) >= 7:
                stop.set()

    with caplog.at_level(logging.INFO):
        t = threading.Thread(target=consume)
        t.start()
        t.join(10)
    stop.set()
    assert not t.is_alive()
    assert len(got) == 7  # 3 frames, outage, 4 frames from the camera that came back
    assert feed.outages == 1 and feed.reconnects == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "gate-test" in warnings[0].message  # logged once, not per retry


def test_missing_source_never_raises(tmp_path: Path) -> None:
    feed = FrameFeed(Camera(str(tmp_path / "nope.avi"), live=True), base_s=0.01, cap_s=0.02)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    assert list(feed.frames(stop)) == []
    assert feed.outages == 1 and feed.broken


def test_presence_gate_skips_a_still_scene() -> None:
    gate = PresenceGate(heartbeat_s=100)
    scene = _image(5)
    assert gate.active(scene, 0.0)  # the first frame sets the background
    for k in range(1, 10):
        assert not gate.active(scene, k * 0.1)
    moved = scene.copy()
    moved[10:50, 10:60] = 255  # a car enters
    assert gate.active(moved, 1.5)
    assert gate.idle_frames == 9 and gate.active_frames == 2


def test_presence_gate_heartbeat() -> None:
    gate = PresenceGate(heartbeat_s=1.0)
    scene = _image(6)
    assert gate.active(scene, 0.0)
    assert not gate.active(scene, 0.5)
    assert gate.active(scene, 1.2)
