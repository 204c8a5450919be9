"""The counter page closes a service visit with its amount (``crm.loyalty.close_service``): the
owner's points and tier move by crm/loyalty.yaml's rules and show on their member page; only
an advisor of the vehicle's dealer, with the CSRF token; hostile input refused with the CRM's
reason, nothing written, every attempt audited."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select

from crm import loyalty
from crm.schema import AuditRecord, Member, utcnow
from crm.tables import PointsEntry, ServiceRecord
from tests.unit.dashboards.conftest import VIN_A, VIN_B, login
from tests.unit.dashboards.test_member import link, sign_in, world  # noqa: F401


def _close(c: Any, token: str, **form: str) -> Any:
    return c.post("/inbox/counter/service", data={"csrf_token": token, **form})


def _ledger_rows(store: Any) -> int:
    with store.tx() as s:
        return int(s.scalar(select(func.count(PointsEntry.id))) or 0)


def test_the_advisor_closes_a_service_and_the_member_sees_points_and_tier(
    world: dict[str, Any],  # noqa: F811
) -> None:
    c, store, owner = world["c"], world["store"], world["owners"][VIN_A]
    cfg = loyalty.config()
    with store.tx() as s:
        before, tier = loyalty.balance(s, owner), s.get(Member, owner).tier  # type: ignore[union-attr]
    assert tier == "silver" and before == 340  # the demo seed's two services, through the ledger
    page = sign_in(c, link(world, VIN_A))
    assert 'id="m-points">340<' in page and ">银卡<" in page and "再得 660 积分升级金卡" in page
    c.cookies.clear()
    token = login(c, "advisor")
    assert 'id="service-form"' in c.get("/inbox/counter").text
    r = _close(c, token, vehicle="DEMO001", amount="¥6,600.00", odometer_km="21000",
               work="保养 oil and filter")  # fmt: skip
    assert r.status_code == 200, r.text
    result = re.search(r'id="service-result">([^<]+)<', r.text)
    assert (
        result
        and "660 points (+660 now); balance 1000; tier Gold · 金卡 (was Silver · 银卡)"
        in result.group(1)
    )
    again = _close(c, token, vehicle=VIN_A.lower(), amount="6600", work="保养 oil and filter")
    assert again.status_code == 200 and "(+0 now); balance 1000" in again.text  # once per visit
    fixed = _close(c, token, vehicle=VIN_A, amount="6000")  # a corrected amount: the difference
    assert fixed.status_code == 200 and "(-60 now); balance 940" in fixed.text
    assert "tier Silver · 银卡 (was Gold · 金卡)" in fixed.text
    with store.tx() as s:
        assert loyalty.balance(s, owner) == 940 == before + 6000 // cfg.points.service_cny_per_point
        rec = s.scalar(select(ServiceRecord).where(ServiceRecord.vin == VIN_A,
                                                   ServiceRecord.service_date == utcnow().date()))  # fmt: skip
        assert rec is not None and rec.odometer_km == 21000 and rec.work == "保养 oil and filter"
        acts = [(a.actor, a.action) for a in s.scalars(select(AuditRecord).where(
            AuditRecord.action.in_(("service.close", "service.close.counter"))))]  # fmt: skip
    assert acts.count(("advisor", "service.close.counter")) == 3
    assert acts.count(("advisor", "service.close")) == 3
    c.cookies.clear()
    page = sign_in(c, link(world, VIN_A))
    assert 'id="m-points">940<' in page and "再得 60 积分升级金卡" in page


def test_hostile_input_is_refused_with_the_reason_and_writes_nothing(
    world: dict[str, Any],  # noqa: F811
) -> None:
    c, store = world["c"], world["store"]
    rows = _ledger_rows(store)
    token = login(c, "advisor")
    cases = [
        ({"amount": "-5"}, "must be"),
        ({"amount": "NaN"}, "NaN"),
        ({"amount": "1e9"}, ""),
        ({"amount": "2000000"}, "the most one service may be"),
        ({"amount": "1.234,50"}, ""),
        ({"amount": "abc"}, ""),
        ({"amount": "100", "odometer_km": "inf"}, "not a number of km"),
        ({"amount": "100", "odometer_km": "-1"}, "odometer_km"),
        ({"amount": "100", "odometer_km": "100"}, "never goes backwards"),
        ({"amount": "100", "vehicle": VIN_B}, "no vehicle of this dealer"),  # dealer-b's car
        ({"amount": "100", "vehicle": "沪Z00000"}, "no vehicle of this dealer"),
        ({"amount": "100", "vehicle": "' OR 1=1 --"}, "no vehicle of this dealer"),
        ({"amount": "100", "work": "a\x00b"}, "work"),
    ]
    for over, reason in cases:
        form = {"vehicle": VIN_A, **over}
        r = _close(c, token, **form)
        assert r.status_code == 400, (form, r.status_code)
        err = re.search(r'id="service-error">Refused: ([^<]+)<', r.text)
        assert err and reason in err.group(1).replace("&#39;", "'"), (form, err and err.group(1))
        assert 'value="' + over["amount"] + '"' in r.text  # the form keeps what was typed
    assert _ledger_rows(store) == rows
    with store.tx() as s:
        refused = s.scalar(select(func.count(AuditRecord.id)).where(
            AuditRecord.action == "service.close.refused", AuditRecord.actor == "advisor"))  # fmt: skip
        assert refused == len(cases)
        today = select(func.count(ServiceRecord.id)).where(
            ServiceRecord.service_date == utcnow().date()
        )
        assert not s.scalar(today)
    assert (
        c.post("/inbox/counter/service", data={"vehicle": VIN_A, "amount": "100"}).status_code
        == 403
    )
    assert (
        _close(c, token, vehicle=VIN_A, amount="1" * 41).status_code == 422
    )  # over the form's limit
    c.cookies.clear()
    agent = login(c, "agent")  # the call centre may not close services
    assert _close(c, agent, vehicle=VIN_A, amount="100").status_code == 403
    assert _ledger_rows(store) == rows
