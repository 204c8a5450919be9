"""The fast candump reader and python-can's reader agree on every shared CAN log."""

from __future__ import annotations

import pytest

from firmware_bridge.can_logs import read_log
from firmware_bridge.frames import read_candump
from tests.conftest import require_data

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_read_candump_equals_python_can_on_all_shared_logs() -> None:
    root = require_data("canlogs")
    logs = sorted(root.glob("*/*.log"))
    assert len(logs) > 50
    total = 0
    for log in logs:
        fast, rep = read_candump(log)
        slow, counters = read_log(log)
        assert rep.bad_lines == 0 and counters.bad_records == 0, log
        assert fast.ts_us.tolist() == slow.ts_us.tolist(), log
        assert fast.can_id.tolist() == slow.can_id.tolist(), log
        assert fast.extended.tolist() == slow.extended.tolist(), log
        assert fast.dlc.tolist() == slow.dlc.tolist(), log
        assert fast.data.shape == slow.data.shape and (fast.data == slow.data).all(), log
        total += len(fast)
    assert total > 900_000
