"""The gate loop and the plate evaluation on the shared photos (../shared/data/plates)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from edge.gate import GateConfig, GateLoop
from tests.conftest import require_data

PICK = ["ccpd_demo_0.jpg", "cn_single_green.jpg", "ccpd_np_np1.jpg"]


@pytest.fixture(scope="module")
def reader():  # type: ignore[no-untyped-def]
    from models.plates.reader import PlateReader

    return PlateReader(threads=1)


@pytest.fixture(scope="module")
def no_retry():  # type: ignore[no-untyped-def]
    from models.plates.reader import PlateReader

    return PlateReader(threads=1, dark_below=None)


def test_gate_over_a_folder_with_a_corrupt_file(tmp_path: Path, reader) -> None:  # type: ignore[no-untyped-def]
    plates = require_data("plates")
    for name in PICK:  # links, not copies: the data stays in ../shared
        (tmp_path / name).symlink_to(plates / name)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    events: list[tuple[str, int, int, dict[str, object]]] = []
    conf = GateConfig(source=str(tmp_path), camera="gate-7", min_votes=1, presence=False)
    stats = GateLoop(conf, lambda *ev: events.append(ev), reader=reader).run()
    assert stats["corrupt_files"] == 1 and stats["frames"] == 3
    got = {e[3]["plate"]: e for e in events}
    assert set(got) == {"皖A195K9", "沪AF71017"}  # the empty-lot photo gives nothing
    kind, ts_us, prio, data = got["沪AF71017"]
    assert kind == "gate.plate" and prio == conf.priority and ts_us > 0
    assert data["camera"] == "gate-7" and data["plate_kind"] == "new-energy"
    assert re.fullmatch(r"[0-9a-f]{64}", str(data["crop_sha256"]))
    assert str(data["time"]).endswith("Z") and 0.5 <= float(data["confidence"]) <= 1  # type: ignore[arg-type]


def test_votes_and_dedupe_over_repeated_frames(reader) -> None:  # type: ignore[no-untyped-def]
    import cv2

    img = cv2.imread(str(require_data("plates") / "cn_single_yellow.jpg"))
    events: list[tuple[str, int, int, dict[str, object]]] = []
    conf = GateConfig(source=".", min_votes=2, gap_s=1.0, dedupe_s=60, presence=False)
    loop = GateLoop(conf, lambda *ev: events.append(ev), reader=reader)
    blank = np.zeros_like(img)
    for ts in (0.0, 0.2, 0.4):  # three frames of one arrival
        loop.process(img, ts)
    loop.process(blank, 3.0)  # the car has gone: the vote closes
    loop.process(img, 10.0)  # back within the dedupe window: no second event
    loop.process(img, 10.2)
    loop.process(blank, 13.0)
    loop.process(None, 13.1)  # an empty frame is counted, not fatal
    assert [e[3]["plate"] for e in events] == ["皖K66666"]
    assert events[0][3]["votes"] == 3
    assert loop.stats["bad_frames"] == 1 and loop.dedupe.suppressed == 1


@pytest.mark.slow
def test_plate_evaluation_reaches_the_first_bar() -> None:
    from carpulse.evals.plates import main

    plates = require_data("plates")
    res = main(["--images", str(plates), "--labels", str(plates / "labels.json"), "--no-latency"])
    print(json.dumps(res, ensure_ascii=False))
    assert res["images"] == 27 and res["plates_counted"] == 21
    assert res["exact_accuracy"] >= 0.90, res["wrong"]
    assert res["false_positives"] == 0


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("ccpd_db_db0.jpg", "皖A0L727"),
        ("ccpd_db_db5.jpg", "皖AS621V"),
        ("cn_double_yellow.jpg", "京EA5331"),
    ],
)
def test_a_dark_frame_is_read_again_brightened(reader, no_retry, name: str, text: str) -> None:  # type: ignore[no-untyped-def]
    import cv2

    img = cv2.imread(str(require_data(f"plates/{name}")))
    dark = (img.astype(np.float32) * 0.25).astype(np.uint8)  # night: a quarter of the light
    assert text in [r.text for r in reader.read(dark)]
    # Without the retry the same frame is not read right: the retry is what reads it.
    assert text not in [r.text for r in no_retry.read(dark)]


def test_the_dark_retry_runs_only_on_dark_frames_without_a_sure_reading(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from models.plates.reader import DARK_TARGET, PlateReader

    seen: list[float] = []
    for dark_below, level, calls in ((70.0, 30, 2), (70.0, 120, 1), (None, 30, 1)):
        r = PlateReader(threads=1, dark_below=dark_below)
        seen.clear()
        monkeypatch.setattr(r, "_search", lambda im, *a, **k: seen.append(float(im.mean())) or [])
        assert r.read(np.full((120, 200, 3), level, np.uint8)) == []
        assert len(seen) == calls, (dark_below, level, seen)
        if calls == 2:  # brightened to the target level
            assert seen[1] == pytest.approx(DARK_TARGET, abs=1.0)
