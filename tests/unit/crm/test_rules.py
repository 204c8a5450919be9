"""CRM rules: the shipped rules load; malformed rules are refused naming file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import RuleError
from crm.rules import load_rules, parse_rules, shipped_rules

GOOD = """\
rules:
  - id: r1
    on: dtc
    when:
      - any: ["event.severity == high", {not: "event.code in [P0001, P0002]"}]
      - event.count >= 2
    subject: vin
    period: day
    effect:
      inbox: {role: expert, template: dtc_alert, priority: 1}
"""


def test_shipped_rules_cover_the_issue() -> None:
    rules = {r.id: r for r in shipped_rules()}
    assert set(rules) == {
        "service-due-coupon", "gate-arrival-card", "tier-upgrade-welcome",
        "coupon-expiry-reminder", "dtc-high-expert", "crash-call-centre",
        "silent-car-call-centre", "oil-life-coupon", "anomaly-advisor-card",
        "tier-downgrade-notice", "win-back", "referral-reward",
        "battery-check-coupon",
        "intrusion-security-card",
    }  # fmt: skip
    due = rules["service-due-coupon"]
    assert due.effect["coupon"] == {
        "template": "maintenance", "valid_until": "event.due_date", "grace_days": 14
    }  # fmt: skip
    assert due.cooldown is not None and due.cooldown.days == 30
    assert rules["crash-call-centre"].effect["inbox"]["priority"] == 0
    assert rules["dtc-high-expert"].effect["inbox"]["role"] == "expert"
    silent = rules["silent-car-call-centre"].effect["inbox"]
    assert (silent["role"], silent["priority"]) == ("call_centre", 0)
    assert rules["oil-life-coupon"].effect["coupon"]["template"] == "maintenance"
    assert rules["battery-check-coupon"].period == "field:event.episode"
    intrusion = rules["intrusion-security-card"]
    assert intrusion.effect["inbox"]["role"] == "call_centre" and intrusion.on == "intrusion"


def test_conditions_all_any_not_and_missing_fields() -> None:
    (rule,) = parse_rules(GOOD, "good.yaml")
    ev = {"severity": "high", "code": "P0001", "count": 2}
    assert rule.when({"event": ev})
    assert not rule.when({"event": {**ev, "count": 1}})
    assert not rule.when({"event": {**ev, "severity": "low"}})  # code in the list, not high
    assert rule.when({"event": {**ev, "severity": "low", "code": "P0300"}})
    assert not rule.when({"event": {"severity": "high"}})  # missing count: false, not an error
    assert not rule.when({"event": {**ev, "count": "many"}})  # str >= int: false, not a crash


@pytest.mark.parametrize(
    ("broken", "where", "why"),
    [
        ("    on: dtc", "bad.yaml:3:9: rules[0] (r1).on", "unknown event 'dtx'"),
        ("      - event.count >= 2", "bad.yaml:6:9: rules[0] (r1).when[1]", "cannot parse"),
        ("    subject: vin", "bad.yaml:7:14: rules[0] (r1).subject", "got 'owner'"),
        ("    period: day", "bad.yaml:8:13: rules[0] (r1).period", "got 'fortnight'"),
        ("      inbox: {role: expert, template: dtc_alert, priority: 1}",
         "bad.yaml:10:21: rules[0] (r1).effect.inbox.role", "unknown role 'boss'"),
    ],
)  # fmt: skip
def test_malformed_rules_name_file_line_and_field(broken: str, where: str, why: str) -> None:
    replacement = {
        "    on: dtc": "    on: dtx",
        "      - event.count >= 2": "      - event.count ~= 2",
        "    subject: vin": "    subject: owner",
        "    period: day": "    period: fortnight",
        "      inbox: {role: expert, template: dtc_alert, priority: 1}":
            "      inbox: {role: boss, template: dtc_alert, priority: 1}",
    }[broken]  # fmt: skip
    with pytest.raises(RuleError) as info:
        parse_rules(GOOD.replace(broken, replacement), "bad.yaml")
    msg = str(info.value)
    assert where in msg and why in msg, msg


def test_every_problem_is_reported_at_once_and_nothing_is_evaluated() -> None:
    text = GOOD.replace("event.count >= 2", "__import__('os').system('true') == 0")
    text = text.replace("period: day", "period: day\n    cooldown: soon\n    colour: red")
    with pytest.raises(RuleError) as info:
        parse_rules(text, "evil.yaml")
    msg = str(info.value)
    assert "evil.yaml:6:9: rules[0] (r1).when[1]: cannot parse condition" in msg
    assert "evil.yaml:9:15: rules[0] (r1).cooldown: bad duration 'soon'" in msg
    assert "evil.yaml:10:5: rules[0].colour: unknown key" in msg


def test_unknown_fields_templates_and_yaml_errors() -> None:
    bad_field = GOOD.replace("event.count >= 2", "customer.age >= 18")
    with pytest.raises(RuleError, match=r"x.yaml:6:9: .*unknown customer field 'age'"):
        parse_rules(bad_field, "x.yaml")
    bad_tpl = GOOD.replace("template: dtc_alert", "template: nope")
    with pytest.raises(RuleError, match=r"x.yaml:10:39: .*no message template 'nope'"):
        parse_rules(bad_tpl, "x.yaml")
    with pytest.raises(RuleError, match=r"x.yaml:3:7: not valid YAML"):
        parse_rules("rules:\n  - id: [r1\n    on: dtc\n", "x.yaml")
    with pytest.raises(RuleError, match=r"x.yaml:1:1: rules: expected a top-level 'rules:' list"):
        parse_rules("- id: r1\n", "x.yaml")
    missing = "rules:\n  - id: r2\n    on: dtc\n"
    with pytest.raises(RuleError, match=r"x.yaml:2:5: rules\[0\].when: is required"):
        parse_rules(missing, "x.yaml")


def test_directories_load_sorted_and_duplicate_ids_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yml").write_text(GOOD.replace("id: r1", "id: r2"))
    assert [r.id for r in load_rules([tmp_path])] == ["r1", "r2"]
    (tmp_path / "c.yaml").write_text(GOOD)
    with pytest.raises(
        RuleError, match=r"c.yaml:2: rules \(r1\).id: duplicate, first at .*a.yaml:2"
    ):
        load_rules([tmp_path])
    with pytest.raises(RuleError, match="no such rules file"):
        load_rules([tmp_path / "missing"])


def test_per_owner_defaults_to_vehicle_subjects_and_is_checked() -> None:
    (vin_rule,) = parse_rules(GOOD)
    assert vin_rule.per_owner  # a sale starts a vin rule's history afresh
    (plain,) = parse_rules(GOOD.replace("    period: day", "    period: day\n    per_owner: false"))
    assert not plain.per_owner
    slot = GOOD.replace("subject: vin", "subject: event.slot")
    assert not parse_rules(slot)[0].per_owner
    assert parse_rules(slot.replace("period: day", "period: day\n    per_owner: true"))[0].per_owner
    customer = GOOD.replace("subject: vin", "subject: customer")
    with pytest.raises(RuleError, match=r"x.yaml:9:16: rules\[0\] \(r1\).per_owner: a customer"):
        parse_rules(customer.replace("period: day", "period: day\n    per_owner: true"), "x.yaml")
    with pytest.raises(RuleError, match=r"x.yaml:9:16: .*per_owner: expected true or false"):
        parse_rules(GOOD.replace("period: day", "period: day\n    per_owner: maybe"), "x.yaml")
