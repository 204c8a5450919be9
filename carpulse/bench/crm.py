"""``python -m carpulse.bench.crm --json``: rules evaluated per second (compiled conditions against the
``eval`` of the same expressions, which the rules engine refuses to use), events per second
through the engine on SQLite, full-log replay time, dry-run time. Medians of ``--repeat`` runs."""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from core.argtypes import count
from crm import store as st
from crm.demo import seed_demo, simulated_predictions
from crm.engine import RuleEngine
from crm.jobs import dry_run, run_events
from crm.migrate import upgrade
from crm.rules import shipped_rules


def _facts(n: int) -> list[dict[str, Any]]:
    return [
        {"event": {"days": float(i % 60), "km_left": float(i % 3000)},
         "customer": {"member": i % 2 == 0, "consent": {"marketing": i % 3 != 0}}}
        for i in range(n)
    ]  # fmt: skip


def bench_rules_eval(n: int) -> dict[str, float]:
    """Conditions of the service-due rule: compiled closures vs ``eval`` of equivalent Python."""
    (rule,) = [r for r in shipped_rules() if r.id == "service-due-coupon"]
    facts = _facts(n)
    code = compile(
        "(f['event']['days'] <= 30 or f['event']['km_left'] <= 1000) and "
        "f['customer']['member'] == True and f['customer']['consent']['marketing'] == True",
        "<baseline>", "eval",
    )  # fmt: skip
    t0 = time.perf_counter()
    ours = sum(rule.when(f) for f in facts)
    t1 = time.perf_counter()
    base = sum(bool(eval(code, {}, {"f": f})) for f in facts)
    t2 = time.perf_counter()
    if ours != base:
        raise AssertionError(f"compiled conditions disagree with eval: {ours} != {base}")
    return {"ours_per_s": n / (t1 - t0), "eval_per_s": n / (t2 - t1), "matches": ours}


def fresh_url(db: str | None, workdir: Path) -> str:
    """SQLite in ``workdir``, or a new database on the PostgreSQL server of ``db``."""
    if not db:
        return f"sqlite:///{workdir / 'bench.sqlite'}"
    name = "bench_" + uuid.uuid4().hex[:10]
    admin = st.make_engine(db, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return db.rsplit("/", 1)[0] + "/" + name


def bench_engine(
    vehicles: int, days: int, workdir: Path, db: str | None = None
) -> dict[str, float]:
    store = st.CrmStore.from_url(fresh_url(db, workdir))
    upgrade(store.engine)
    vins = seed_demo(store, vehicles)
    events = simulated_predictions(vins, days)
    engine = RuleEngine(shipped_rules(), webhook_url="http://127.0.0.1:9/hook")
    t0 = time.perf_counter()
    dry = dry_run(store, engine, events)
    t1 = time.perf_counter()
    first = run_events(store, engine, events)
    t2 = time.perf_counter()
    again = run_events(store, engine, events)
    t3 = time.perf_counter()
    store.engine.dispose()
    if again["fired"] != 0 or dry["fired"] != first["fired"]:
        raise AssertionError(
            f"replay fired {again['fired']}, dry run {dry['fired']} vs {first['fired']}"
        )
    return {
        "events": len(events),
        "rules_evaluated": first["events"] * len(engine.by_kind["service_due"]),
        "fired": first["fired"],
        "dry_run_s": t1 - t0,
        "first_pass_s": t2 - t1,
        "replay_s": t3 - t2,
    }


def bench_crm(argv: list[str]) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="carpulse.bench.crm", description=__doc__)
    ap.add_argument("--vehicles", type=count(), default=100)
    ap.add_argument("--days", type=count(), default=30)
    ap.add_argument("--evals", type=count(), default=200_000)
    ap.add_argument("--repeat", type=count(), default=3)
    ap.add_argument("--db", help="PostgreSQL server URL (a fresh database per run); default SQLite")
    args = ap.parse_args(argv)
    evals = [bench_rules_eval(args.evals) for _ in range(args.repeat)]
    runs = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(bench_engine(args.vehicles, args.days, Path(tmp), args.db))

    def med(rows: list[dict[str, float]], key: str) -> float:
        return float(statistics.median(r[key] for r in rows))

    ours, base = med(evals, "ours_per_s"), med(evals, "eval_per_s")
    events = runs[0]["events"]
    return {
        "vehicles": args.vehicles, "days": args.days, "repeat": args.repeat,
        "database": "postgresql" if args.db else "sqlite",
        "conditions_per_s": round(ours), "eval_baseline_per_s": round(base),
        "ratio_vs_eval": round(ours / base, 2),
        "events": int(events), "fired": int(runs[0]["fired"]),
        "first_pass_s": round(med(runs, "first_pass_s"), 3),
        "first_pass_events_per_s": round(events / med(runs, "first_pass_s"), 1),
        "rules_evaluated_per_s_with_db": round(runs[0]["rules_evaluated"] / med(runs, "first_pass_s"), 1),
        "replay_s": round(med(runs, "replay_s"), 3),
        "replay_events_per_s": round(events / med(runs, "replay_s"), 1),
        "dry_run_s": round(med(runs, "dry_run_s"), 3),
        "dry_run_events_per_s": round(events / med(runs, "dry_run_s"), 1),
    }  # fmt: skip


if __name__ == "__main__":
    import sys

    as_json = "--json" in sys.argv
    result = bench_crm([a for a in sys.argv[1:] if a != "--json"])
    print(json.dumps(result) if as_json else json.dumps(result, indent=2))
