"""The dealer gate: camera -> presence gate -> plates (and consented faces) -> gate events on the durable queue.

``carpulse gate run --source DIR|VIDEO|RTSP|INDEX``. Each frame that the presence gate lets through
is read (:class:`models.plates.reader.PlateReader`); readings are voted over frames
(:class:`models.plates.vote.PlateVoter`) and deduplicated per plate, and each arrival becomes one
``core.wire.Event`` of kind ``gate.plate``::

    data = {"plate": "皖A195K9", "confidence": 0.97, "camera": "gate-1", "time": "2026-...Z",
            "crop_sha256": "<sha256 of the crop's pixels>", "votes": 3, "plate_kind": "standard"}

Events are appended to the edge agent's durable queue (``edge.queue.DurableQueue``) under the
gate's own device id and sent over MQTT (QoS 1, deleted after PUBACK) on
``carpulse/v1/<device>/events``. Faces (optional) only match members enrolled with consent and
produce ``gate.face`` events carrying the member id and similarity: never an image.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from core.config import CarpulseSettings
from core.topics import device_topic
from core.wire import Event, encode_event
from firmware_bridge.camera import Camera, FrameFeed, PresenceGate
from models.plates.syntax import plate_kind
from models.plates.vote import Consensus, DedupeWindow, PlateVoter, Reading

log = logging.getLogger(__name__)

EventSink = Callable[[str, int, int, dict[str, Any]], None]  # (kind, ts_us, priority, data)


class GateConfig(BaseModel):
    """Settings of one gate camera."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="Device index, RTSP/HTTP URL, video file or image folder.")
    camera: str = Field("gate-1", description="Camera name carried in every event.")
    live: bool | None = Field(
        None, description="Reconnect when frames stop (default: devices/URLs)."
    )
    threads: int = Field(1, ge=0, description="onnxruntime threads (0 = all cores).")
    min_confidence: float = Field(0.5, ge=0, le=1, description="Lowest character probability.")
    plate_line: bool = Field(
        True,
        description="Run the plate-line recogniser before PP-OCR and where nothing else read.",
    )
    plate_cells: bool = Field(
        False,
        description="Run the plate-font cell recogniser too (off: on real photos the line model reads what it read).",
    )
    plate_finder: bool = Field(
        False,
        description="Read the learned plate finder's boxes too (experimental: slower, see BENCHMARKS.md).",
    )
    plate_settle: float = Field(
        0.9,
        ge=0,
        le=1,
        description="A plate reading below this keeps the search going (0: the first one ends it).",
    )
    plate_colour_kinds: bool = Field(
        True,
        description="Read a plate only as the kinds its colour allows (GA 36: green = new-energy, blue = ordinary).",
    )
    plate_red_marks: bool = Field(
        True,
        description="Read a white plate with a red glyph at one end as the kinds with a red character there (police 警, WJ, 应急, 使).",
    )
    plate_serial: bool = Field(
        True,
        description="Let the plate recogniser trained on real photos (CCPD) correct PP-OCR's letters and digits.",
    )
    plate_rec_neck: bool = Field(
        True,
        description="Run PP-OCR's recogniser with its neck and head retrained on plates (off: as PaddleOCR shipped it).",
    )
    plate_province_vote: float = Field(
        0.8,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="A reading whose province was read below this has it voted on by PP-OCR over jittered crops (0: off).",
    )
    min_votes: int = Field(2, ge=1, description="Frames that must read a plate before an event.")
    gap_s: float = Field(1.5, gt=0, description="A plate unseen this long closes its vote.")
    dedupe_s: float = Field(300.0, ge=0, description="Same plate again within this: no event.")
    priority: int = Field(3, ge=1, le=9, description="Queue priority of gate events.")
    presence: bool = Field(True, description="Skip frames without motion (cheap test).")
    face_detector: Path | None = Field(None, description="Face detector ONNX (see README).")
    face_detector_kind: str = Field("boxes", description="'boxes' or 'scrfd'.")
    face_embedder: Path | None = Field(None, description="ArcFace-style embedder ONNX.")
    face_gallery: Path | None = Field(None, description="Consented members' embeddings (.npz).")
    face_threshold: float = Field(0.5, ge=-1, le=1, description="Cosine similarity to match.")


def iso_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class GateLoop:
    """Frames in, gate events out through ``sink``; never raises for bad frames or lost cameras."""

    def __init__(
        self,
        conf: GateConfig,
        sink: EventSink,
        *,
        reader: Any = None,
        faces: Any = None,
        feed: FrameFeed | None = None,
        tick: Callable[[], None] | None = None,
    ) -> None:
        self.conf, self.sink, self.tick = conf, sink, tick
        if reader is None:
            from models.plates.cells import MODEL_PATH
            from models.plates.find import FIND_PATH
            from models.plates.line import LINE_PATH
            from models.plates.reader import PlateReader
            from models.plates.rec_neck import REC_NECK_PATH
            from models.plates.serial import SERIAL_PATH

            reader = PlateReader(
                threads=conf.threads,
                min_confidence=conf.min_confidence,
                cell_model=MODEL_PATH if conf.plate_cells else None,
                line_model=LINE_PATH if conf.plate_line else None,
                find_model=FIND_PATH if conf.plate_finder else None,
                settle=conf.plate_settle,
                colour_kinds=conf.plate_colour_kinds,
                red_marks=conf.plate_red_marks,
                serial_model=SERIAL_PATH if conf.plate_serial else None,
                rec_neck=REC_NECK_PATH if conf.plate_rec_neck else None,
                province_vote=conf.plate_province_vote,
            )
        self.reader = reader
        self.faces = faces  # a FaceMatcher or None
        self.feed = feed or FrameFeed(Camera(conf.source, live=conf.live, name=conf.camera))
        self.presence = PresenceGate() if conf.presence else None
        self.voter = PlateVoter(min_votes=conf.min_votes, gap_s=conf.gap_s)
        self.dedupe = DedupeWindow(conf.dedupe_s)
        self._face_seen = DedupeWindow(conf.dedupe_s)
        self.stats: dict[str, Any] = {
            "frames": 0,
            "active_frames": 0,
            "bad_frames": 0,
            "readings": 0,
            "plate_events": 0,
            "face_events": 0,
            "read_ms_total": 0.0,
        }
        self.plates: list[dict[str, Any]] = []  # events emitted (for the CLI's summary)

    def _emit(self, c: Consensus) -> None:
        if not self.dedupe.allow(c.text, c.last_ts):
            return
        data = {
            "plate": c.text,
            "confidence": round(c.confidence, 4),
            "camera": self.conf.camera,
            "time": iso_time(c.first_ts),
            "crop_sha256": c.crop_sha256,
            "votes": c.votes,
            "plate_kind": plate_kind(c.text),
        }
        self.sink("gate.plate", int(c.first_ts * 1e6), self.conf.priority, data)
        self.stats["plate_events"] += 1
        self.plates.append(data)

    def process(self, image: Any, ts: float) -> None:
        """One frame: presence, plates, faces. Bad frames are counted and dropped."""
        self.stats["frames"] += 1
        if image is None or getattr(image, "ndim", 0) != 3 or image.size == 0:
            self.stats["bad_frames"] += 1
            if self.stats["bad_frames"] == 1:
                log.warning("camera %s: empty or malformed frame (dropped)", self.conf.camera)
            return
        if self.presence is not None and not self.presence.active(image, ts):
            for c in self.voter.flush(ts):
                self._emit(c)
            return
        self.stats["active_frames"] += 1
        t0 = time.perf_counter()
        reads = self.reader.read(image)
        self.stats["read_ms_total"] += (time.perf_counter() - t0) * 1000
        for r in reads:
            self.stats["readings"] += 1
            for c in self.voter.add(Reading(r.text, r.confidence, ts, r.crop_sha256)):
                self._emit(c)
        for c in self.voter.flush(ts):
            self._emit(c)
        if self.faces is not None:
            for member, sim in self.faces.identify(image):
                if self._face_seen.allow(member, ts):
                    data = {
                        "member_id": member,
                        "similarity": round(sim, 4),
                        "camera": self.conf.camera,
                        "time": iso_time(ts),
                    }
                    self.sink("gate.face", int(ts * 1e6), self.conf.priority, data)
                    self.stats["face_events"] += 1

    def run(self, stop: threading.Event | None = None, seconds: float = 0.0) -> dict[str, Any]:
        """Until the source is exhausted, ``stop`` is set or ``seconds`` pass (0 = no limit)."""
        stop = stop or threading.Event()
        deadline = time.monotonic() + seconds if seconds > 0 else None
        for frame in self.feed.frames(stop):
            self.process(frame.image, frame.ts)
            if self.tick is not None:
                self.tick()
            if deadline is not None and time.monotonic() >= deadline:
                break
        for c in self.voter.flush(None):
            self._emit(c)
        cam = self.feed.camera
        self.stats.update(
            corrupt_files=cam.corrupt,
            outages=self.feed.outages,
            reconnects=self.feed.reconnects,
            suppressed=self.dedupe.suppressed,
            discarded_votes=self.voter.discarded,
        )
        if self.presence is not None:
            self.stats["idle_frames"] = self.presence.idle_frames
        return self.stats


class FaceMatcher:
    """Detector + embedder + consented gallery: ``identify(image)`` -> ``[(member_id, similarity)]``."""

    def __init__(self, detector: Any, embedder: Any, gallery: Any) -> None:
        self.detector, self.embedder, self.gallery = detector, embedder, gallery

    def identify(self, image: Any) -> list[tuple[str, float]]:
        out = []
        for face in self.detector.detect(image):
            try:
                vec = self.embedder.embed(image, face)
            except ValueError:
                continue
            hit = self.gallery.match(vec)
            if hit is not None:
                out.append(hit)
        return out


class QueuedEvents:
    """Gate events -> the durable queue -> MQTT: appended before sending, deleted after PUBACK."""

    def __init__(self, settings: CarpulseSettings, device_id: str, window: int = 16) -> None:
        from edge.publisher import MqttPublisher, device_mqtt_settings
        from edge.queue import DurableQueue
        from edge.seqstate import SequenceCounter

        state = Path(settings.edge.state_dir)
        self.device_id = device_id
        self.seq = SequenceCounter(state, device_id)
        self.queue = DurableQueue(state / f"{device_id}.queue.sqlite")
        self.topic = device_topic(device_id, "events")
        self.pub = MqttPublisher(
            device_mqtt_settings(settings, device_id), self.seq.boot_id, window
        )
        self.window = window
        self._acks: deque[int] = deque()
        self.pub.on_ack = self._acks.append  # paho's thread; deque.append is atomic
        self._inflight: dict[int, int] = {}
        self.acked = 0

    def start(self) -> None:
        self.pub.start()

    def __call__(self, kind: str, ts_us: int, priority: int, data: dict[str, Any]) -> None:
        seq = self.seq.next()
        ev = Event(self.device_id, self.seq.boot_id, seq, kind, ts_us, priority, data)
        self.queue.put(
            "events", self.topic, encode_event(ev), priority=priority,
            boot_id=self.seq.boot_id, seq=seq,
        )  # fmt: skip
        self.pump()

    def pump(self) -> None:
        """Delete acknowledged rows, then send queued rows up to the in-flight window."""
        done: list[int] = []
        while self._acks:
            row = self._inflight.pop(self._acks.popleft(), None)
            if row is not None:
                done.append(row)
        if done:
            self.queue.ack(done)
            self.acked += len(done)
        if not self.pub.connected:
            return
        room = self.window - len(self._inflight)
        if room > 0:
            for item in self.queue.take(room, set(self._inflight.values())):
                self._inflight[self.pub.publish_nowait(item.topic, item.payload)] = item.id

    def close(self, drain_s: float = 5.0) -> None:
        end = time.monotonic() + drain_s
        while time.monotonic() < end and (self._inflight or len(self.queue)):
            self.pump()
            time.sleep(0.02)
        self.pump()
        try:
            self.pub.close()
        finally:
            self.queue.close()


def build_faces(conf: GateConfig, consented: Callable[[str], bool]) -> FaceMatcher | None:
    """The face matcher when all three paths are configured, else ``None`` (plates only)."""
    paths = (conf.face_detector, conf.face_embedder, conf.face_gallery)
    if not all(paths):
        return None
    from models.faces.gallery import FaceGallery
    from models.faces.onnx_models import FaceDetector, FaceEmbedder

    det = FaceDetector(conf.face_detector, conf.face_detector_kind, threads=conf.threads)  # type: ignore[arg-type]
    emb = FaceEmbedder(conf.face_embedder, threads=conf.threads)  # type: ignore[arg-type]
    gallery = FaceGallery(conf.face_gallery, consented, conf.face_threshold)  # type: ignore[arg-type]
    removed = gallery.sync_consent()
    if removed:
        log.info("deleted face embeddings of %d members without consent", len(removed))
    return FaceMatcher(det, emb, gallery)
