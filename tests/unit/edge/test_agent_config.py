"""Agent configuration errors name the table and field; reconnect backoff stays in its bounds."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.backoff import Backoff
from core.errors import ConfigError
from edge.agent import EdgeAgent, load_agent_config


def _write(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "edge.toml"
    p.write_text(f'[edge]\ndevice_id = "car-1"\nstate_dir = "{tmp_path / "state"}"\n{body}')
    return p


def test_agent_tables_load_beside_the_edge_settings(tmp_path: Path) -> None:
    s, conf = load_agent_config(
        _write(tmp_path, '[[edge.sources]]\ntype = "sim"\n[edge.queue]\nmax_bytes = 1000\n')
    )
    assert s.edge.device_id == "car-1"
    assert conf.sources == [{"type": "sim"}] and conf.queue.max_bytes == 1000


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("[edge.queue]\nmax_bytes = -1\n", "edge.queue.max_bytes"),
        ('[edge.queue]\nfsync = "sometimes"\n', "edge.queue.fsync"),
        ("[edge.queue]\nsize = 3\n", "edge.queue.size"),
    ],
)
def test_bad_queue_settings(tmp_path: Path, body: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        load_agent_config(_write(tmp_path, body))


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("", "no \\[\\[edge.sources\\]\\]"),
        ("[[edge.sources]]\nport = 3\n", "entry 0: 'type' is missing"),
        ('[[edge.sources]]\ntype = "lidar"\n', "unknown source type 'lidar'"),
        ('[[edge.sources]]\ntype = "sim"\nspeed = 3\n', "source 'sim0' \\(type sim\\)"),
        (
            '[[edge.sources]]\ntype = "sim"\n[[edge.campaigns]]\nname = "x"\nkind = "sometimes"\n',
            "campaigns\\[0\\]",
        ),
    ],
)
def test_bad_agent_tables(tmp_path: Path, body: str, why: str) -> None:
    s, conf = load_agent_config(_write(tmp_path, body))
    with pytest.raises(ConfigError, match=why):
        EdgeAgent(s, conf)


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    b = Backoff(base_s=0.5, cap_s=8.0, jitter="equal", seed=1)  # as the MQTT publisher
    delays = [b.next() for _ in range(8)]
    for i, d in enumerate(delays):
        full = min(8.0, 0.5 * 2**i)
        assert full / 2 <= d <= full
    assert len({round(d, 6) for d in delays[4:]}) > 1  # capped, yet not in lock-step
    b.reset()
    assert b.next() <= 0.5
