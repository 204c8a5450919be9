"""Every record of the CRM's four topics, mutated with extreme values (ints beyond int64, NaN,
huge strings, NUL, lone surrogates, wrong types), is handled or refused with the two errors the
agent dead-letters by reason: never another exception, which would be counted as a crash."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack

from carpulse.bench.e2e_crm import GATE, crm_records, seeded_store
from core.errors import DecodeError, WireError
from core.wire import EVENT_MAGIC
from crm.agents import handle_record
from crm.engine import RuleEngine
from crm.rules import shipped_rules

EXTREME: list[Any] = [
    2**63, 2**64 + 1, -(2**70), 2**200, -1, 0, True, None, "x" * 200_000, "", "\x00", "\ud800",
    [], {}, [[[[1]]]], 1e308, -1e308, 5e-324, "NaN", "Infinity", float("nan"), float("inf"),
    {"a": {"b": {"c": 1}}}, "𝔘" * 5000,
]  # fmt: skip


def _mutate(obj: Any, rng: random.Random) -> None:
    if isinstance(obj, dict) and obj:
        key = rng.choice(list(obj))
        if isinstance(obj[key], dict | list) and rng.random() < 0.4:
            _mutate(obj[key], rng)
        else:
            obj[key] = rng.choice(EXTREME)
    elif isinstance(obj, list) and obj:
        obj[rng.randrange(len(obj))] = rng.choice(EXTREME)


def _hostile(value: bytes, rng: random.Random) -> bytes:
    if value.startswith(EVENT_MAGIC):  # a device event: msgpack after magic and schema
        head = len(EVENT_MAGIC) + 1
        while True:  # msgpack itself cannot carry ints past 64 bits or lone surrogates
            body = msgpack.unpackb(value[head:], raw=False)
            for _ in range(rng.randint(1, 2)):
                _mutate(body, rng)
            try:
                return value[:head] + msgpack.packb(body, use_bin_type=True)
            except (OverflowError, UnicodeEncodeError):
                continue
    doc = json.loads(value)
    for _ in range(rng.randint(1, 2)):
        _mutate(doc, rng)
    return json.dumps(doc).encode("utf-8", "surrogatepass")  # NaN as the bare token, too


def test_mutated_records_are_handled_or_refused_never_crash(tmp_path: Path) -> None:
    store, vins, devices, plates = seeded_store(f"sqlite:///{tmp_path / 'c.sqlite'}", 10)
    engine = RuleEngine(shipped_rules(), webhook_url=None)
    records = crm_records(vins, devices, plates, 100)
    rng = random.Random(20261205)
    outcome: Counter[str] = Counter()
    for _ in range(600):
        topic, _key, value = rng.choice(records)
        payload = _hostile(value, rng)
        try:
            handle_record(store, engine, topic, payload, Counter(), frozenset({GATE}))
            outcome["handled"] += 1
        except (DecodeError, WireError):
            outcome["refused"] += 1
    # both happen: a mutation of an unused field passes, one of a checked field is refused
    assert outcome["handled"] > 50 and outcome["refused"] > 300, outcome
    # the database still takes a clean record after all of them
    stats: Counter[str] = Counter()
    handle_record(store, engine, *records[0][::2], stats, frozenset({GATE}))
    assert stats["events"] == 1
