"""The Faust app is assembled without a broker: agents, tables with raw values, output topics."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from core.config import CarpulseSettings
from core.errors import ConfigError
from stream.app import build_app, counters_of, prepare_output_topics
from stream.transport import Transport


def test_app_has_the_agents_and_tables() -> None:
    app = build_app(CarpulseSettings())
    assert set(app.agents) >= {
        "stream.agents.telemetry_pipeline",
        "stream.agents.events_fast_path",
        "stream.agents.device_status",  # carpulse.status: online/offline into the silence watch
        "stream.sinks.writer.influx_retry",
    }
    watch = app.carpulse_silence  # type: ignore[attr-defined]
    assert (watch.after_us, watch.min_kmh) == (
        120_000_000,
        30.0,
    )  # [stream] silent_after_s, _min_kmh
    for name in ("dedupe", "vehicle_state", "models"):
        changelog = app.tables[name].changelog_topic
        assert changelog.value_serializer == "raw" and changelog.key_serializer == "json"
    assert app.conf.web_bind == "127.0.0.1"
    assert app.conf.web_tables_enabled is False  # no table views: vehicle_state holds locations
    blueprints = [name for _, name in app.web._enabled_blueprints()]
    assert "faust.web.apps.tables.blueprint" not in blueprints


def test_a_bad_registry_stops_the_worker_at_start(tmp_path: Path) -> None:
    reg = tmp_path / "r.csv"
    reg.write_text("device_id,vin\nbad id,X\n")
    settings = CarpulseSettings()
    settings.stream.registry = str(reg)
    with pytest.raises(ConfigError, match="line 2"):
        build_app(settings)


def test_the_worker_consumer_fetch_wait_comes_from_the_settings() -> None:
    # Faust 0.15 hard-codes 1500 ms; a broker holding an empty fetch delays records by that much.
    settings = CarpulseSettings()
    settings.stream.fetch_max_wait_ms = 77
    app = build_app(settings)
    assert isinstance(app.transport, Transport)
    thread = app.consumer._thread  # the consumer thread Faust starts for the worker
    assert thread.transport is app.transport

    async def made() -> tuple[int, str]:
        consumer = thread._create_consumer(asyncio.get_running_loop())
        try:  # what aiokafka hands its Fetcher at start(), and really the worker's group
            return consumer._fetch_max_wait_ms, consumer._group_id
        finally:
            await consumer.stop()

    try:
        assert asyncio.run(made()) == (77, settings.stream.app_id)
    finally:
        thread.thread_loop.close()  # made with the thread object; the thread never ran
    assert CarpulseSettings().stream.fetch_max_wait_ms == 100


def test_counters_are_the_pipelines_own() -> None:
    app = build_app(CarpulseSettings())
    pipeline = app.carpulse_pipeline  # type: ignore[attr-defined]
    pipeline.process([(0, b"not telemetry")], lambda table, key: None)
    got = counters_of(app)
    assert got["telemetry"]["records"] == 1 and got["telemetry"]["dead_lettered"] == 1
    assert got["events"]["events"] == 0
    assert got["sink"]["written"] == 0 and got["sink"]["broken"] is False
    assert got["fetch"] == {"paced": False}  # no consumer started yet
    assert got["batches"] == {}  # no telemetry agent running yet
    assert not hasattr(app, "carpulse_counters")


def test_output_topics_without_kafka_are_a_warning_not_a_crash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = CarpulseSettings()
    settings.kafka.bootstrap = "127.0.0.1:1"  # nothing listens there
    asyncio.run(prepare_output_topics(settings))
    assert "could not prepare the output topics" in caplog.text and "vehicle-state" in caplog.text


def test_faust_table_data_goes_to_the_data_dir_not_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = CarpulseSettings()
    settings.stream.data_dir = tmp_path / "faust"
    app = build_app(settings)
    assert Path(app.conf.datadir) == tmp_path / "faust" / f"{settings.stream.app_id}-data"
    # unset: the user's state directory, never a relative path
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    app = build_app(CarpulseSettings())
    assert Path(app.conf.datadir) == tmp_path / "state/carpulse/faust/carpulse-stream-data"
    monkeypatch.delenv("XDG_STATE_HOME")
    default = Path(build_app(CarpulseSettings()).conf.datadir)
    assert default.is_absolute() and default.parent == Path.home() / ".local/state/carpulse/faust"


def test_the_crm_worker_keeps_its_table_data_beside_the_stream_workers(tmp_path: Path) -> None:
    from crm.agents import build_crm_app
    from crm.engine import RuleEngine
    from crm.rules import shipped_rules
    from crm.store import CrmStore

    settings = CarpulseSettings()
    settings.stream.data_dir = tmp_path
    from sqlalchemy import create_engine

    store = CrmStore(create_engine("sqlite://"))
    app = build_crm_app(
        "crm-x", settings.kafka, store, RuleEngine(shipped_rules()),
        datadir=settings.stream.faust_datadir("crm-x"),
    )  # fmt: skip
    assert Path(app.conf.datadir) == tmp_path / "crm-x-data"
    default = build_crm_app("crm-y", settings.kafka, store, RuleEngine(shipped_rules()))
    assert Path(default.conf.datadir).is_absolute()
    store.engine.dispose()


def test_the_worker_makes_the_data_dir_faust_only_makes_the_last_level(tmp_path: Path) -> None:
    settings = CarpulseSettings()
    settings.stream.data_dir = tmp_path / "a" / "b"
    path = settings.stream.faust_datadir("x", create=True)
    assert path.parent.is_dir() and not path.exists()  # Faust makes x-data itself
    (tmp_path / "file").write_text("")
    settings.stream.data_dir = tmp_path / "file" / "faust"
    with pytest.raises(ConfigError, match=r"stream\.data_dir"):
        settings.stream.faust_datadir("x", create=True)


def test_both_faust_apps_share_the_kafka_settings_and_the_fetch_wait(tmp_path: Path) -> None:
    # one builder (stream.kafka_options.make_faust_app): the CRM worker's consumer waits as
    # briefly as the stream worker's, not Faust's hard-coded 1.5 s
    from sqlalchemy import create_engine

    from crm.agents import build_crm_app
    from crm.engine import RuleEngine
    from crm.rules import shipped_rules
    from crm.store import CrmStore
    from stream.kafka_options import faust_app_settings

    settings = CarpulseSettings()
    settings.stream.data_dir = tmp_path
    settings.stream.session_timeout_s = 12.0
    stream_app = build_app(settings)
    store = CrmStore(create_engine("sqlite://"))
    crm_app = build_crm_app(
        "crm-z", settings.kafka, store, RuleEngine(shipped_rules()),
        session_timeout_s=12.0, datadir=tmp_path / "crm-z-data", fetch_max_wait_ms=77,
    )  # fmt: skip
    store.engine.dispose()
    shared = faust_app_settings(settings.kafka, "crm", session_timeout_s=12.0)
    for key in shared.keys() - {"broker", "broker_credentials"}:
        assert getattr(stream_app.conf, key) == getattr(crm_app.conf, key), key
    assert crm_app.conf.broker_max_poll_records == 1000
    assert crm_app.conf.broker_session_timeout == 12.0
    assert isinstance(crm_app.transport, Transport) and crm_app.transport.fetch_max_wait_ms == 77
    assert stream_app.transport.fetch_max_wait_ms == settings.stream.fetch_max_wait_ms == 100


def test_the_worker_keeps_the_root_logger_at_its_level() -> None:
    # Faust's start-up spinner set the root logger to DEBUG for good at loglevel warn: every
    # library's debug record was made and dropped (issue 22). Logging is set up as the worker
    # does it, then put back as it was.
    import logging

    from stream.app import faust_worker

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    worker = faust_worker(build_app(CarpulseSettings()), "warn")
    try:
        worker._setup_logging()
        assert root.level == logging.WARNING
        assert not logging.getLogger("faust.topics").isEnabledFor(logging.DEBUG)
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        for h in handlers:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)
