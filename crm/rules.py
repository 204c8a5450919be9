"""CRM rules in YAML: load, validate (errors name file, line and field) and compile to closures.

A rules file is ``{rules: [rule, ...]}``; a rule::

    id: service-due-coupon            # [a-z0-9-], unique across the loaded files
    on: service_due                   # an event kind (EVENT_KINDS)
    when:                             # all must hold; a condition is a string or all/any/not
      - any: ["event.days <= 30", "event.km_left <= 1000"]
      - customer.member == true
    subject: vin                      # vin | customer | event.<field>: who the effect is about
    period: field:event.cycle         # event | day | week | month | year | field:<path>
    per_owner: true                   # a sale starts the subject's history afresh (vin: default)
    cooldown: 30d                     # no second effect for the same subject within this
    rate_limit: {max: 2, per: 7d, group: marketing}   # per customer, across a group of rules
    effect:
      coupon: {template: maintenance, valid_until: event.due_date, grace_days: 14}
      message: {template: service_due, channels: [email, webhook]}
      inbox: {role: advisor, template: arrival_card, priority: 3}

A condition string is ``PATH OP LITERAL`` with OP in ``== != < <= > >= in`` and a YAML literal;
nothing is evaluated as code. A path that is missing makes its condition false.

``per_owner`` (default true for ``subject: vin``, false otherwise; refused with ``subject:
customer``, who is the owner already) keys the effect, its cool-down and its duplicate check on
the ownership in force at the event's time, so a new owner gets the effects the previous owner
already had, and a vehicle nobody owned at that time keeps the plain per-vehicle key.
"""

from __future__ import annotations

import datetime as dt
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from core.crm_events import EVENT_KINDS
from core.errors import RuleError
from crm.messages import TEMPLATES_DIR, message_templates
from crm.tables import INBOX_ROLES

PERIODS: Final = ("event", "day", "week", "month", "year")
CHANNELS: Final = ("email", "webhook")
CUSTOMER_FIELDS: Final = frozenset(
    {
        "id",
        "known",
        "member",
        "tier",
        "lang",
        "consent.marketing",
        "consent.location",
        "consent.face",
    }
)
VEHICLE_FIELDS: Final = frozenset({"vin", "model", "plate"})
RULE_KEYS: Final = frozenset(
    {"id", "description", "on", "when", "subject", "period", "cooldown", "rate_limit", "effect",
     "enabled", "per_owner"}
)  # fmt: skip
ID_RE: Final = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
TEMPLATE_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
PATH_RE: Final = re.compile(r"^(event|customer|vehicle)(\.[A-Za-z_][A-Za-z0-9_]*)+$")
COND_RE: Final = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(==|!=|<=|>=|<|>|\bin\b)\s*(.+?)\s*$")
DURATION_RE: Final = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "in": lambda a, b: a in b,
}
_MISSING: Final = object()

Facts = Mapping[str, Any]
Condition = Callable[[Facts], bool]


def lookup(facts: Facts, path: str) -> Any:
    """``facts['event']['days']`` for ``event.days``; ``_MISSING`` when any step is absent."""
    cur: Any = facts
    for part in path.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        else:
            return _MISSING
    return cur


def is_missing(value: Any) -> bool:
    return value is _MISSING


@dataclass(frozen=True)
class RateLimit:
    max: int
    per: dt.timedelta
    group: str


@dataclass(frozen=True)
class Rule:
    id: str
    on: str
    when: Condition
    subject: str
    period: str
    effect: dict[str, dict[str, Any]]
    cooldown: dt.timedelta | None = None
    rate_limit: RateLimit | None = None
    description: str = ""
    source: str = ""  # file:line, for explanations
    conditions: tuple[str, ...] = field(default=(), compare=False)
    per_owner: bool = False  # the effect belongs to the ownership of the event's vehicle

    @property
    def kind(self) -> str:
        return "+".join(sorted(self.effect))


class _Errors:
    """Collects every problem of a file with its position, then raises one ``RuleError``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.items: list[str] = []

    def add(self, node: yaml.Node | None, where: str, msg: str) -> None:
        pos = f"{node.start_mark.line + 1}:{node.start_mark.column + 1}" if node else "?"
        self.items.append(f"{self.path}:{pos}: {where}: {msg}")


def _get(node: yaml.MappingNode, key: str) -> yaml.Node | None:
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return v
    return None


def _keys(node: yaml.MappingNode) -> list[tuple[yaml.Node, Any]]:
    return [(k, k.value) for k, _ in node.value]


_constructor = yaml.constructor.SafeConstructor()


def _value(node: yaml.Node) -> Any:
    return _constructor.construct_object(node, deep=True)


def parse_duration(text: Any) -> dt.timedelta:
    m = DURATION_RE.match(str(text).strip())
    if not m:
        raise ValueError(f"bad duration {text!r}: expected a number and s/m/h/d/w, e.g. 30d")
    return dt.timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def check_path(path: str) -> str | None:
    """Why ``path`` is not a valid fact path, or None."""
    if not PATH_RE.match(path):
        return f"bad path {path!r}: expected event.<field>, customer.<field> or vehicle.<field>"
    root, rest = path.split(".", 1)
    if root == "customer" and rest not in CUSTOMER_FIELDS:
        return f"unknown customer field {rest!r}; known: {', '.join(sorted(CUSTOMER_FIELDS))}"
    if root == "vehicle" and rest not in VEHICLE_FIELDS:
        return f"unknown vehicle field {rest!r}; known: {', '.join(sorted(VEHICLE_FIELDS))}"
    return None


def _leaf(text: str) -> tuple[Condition, str]:
    m = COND_RE.match(text)
    if not m:
        raise ValueError(f"cannot parse condition {text!r}: expected 'PATH OP VALUE'")
    path, op, raw = m.group(1), m.group(2), m.group(3)
    why = check_path(path)
    if why:
        raise ValueError(why)
    try:
        literal = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ValueError(f"bad value {raw!r} in condition {text!r}: {err}") from None
    if op == "in" and not isinstance(literal, list):
        raise ValueError(f"'in' needs a list, e.g. [a, b], in condition {text!r}")
    fn = _OPS[op]
    parts = tuple(path.split("."))

    def cond(facts: Facts) -> bool:
        cur: Any = facts
        try:
            for part in parts:
                cur = cur[part]
            return bool(fn(cur, literal))
        # a missing field, or a string compared with a number: the condition does not hold
        except (KeyError, TypeError, IndexError):
            return False

    return cond, text


def _compile(node: yaml.Node, where: str, errs: _Errors, texts: list[str]) -> Condition | None:
    if isinstance(node, yaml.ScalarNode):
        try:
            cond, text = _leaf(str(_value(node)))
        except ValueError as err:
            errs.add(node, where, str(err))
            return None
        texts.append(text)
        return cond
    if isinstance(node, yaml.SequenceNode):
        return _all([_compile(n, f"{where}[{i}]", errs, texts) for i, n in enumerate(node.value)])
    if isinstance(node, yaml.MappingNode) and len(node.value) == 1:
        (knode, vnode), = node.value  # fmt: skip
        key = knode.value
        if key in ("all", "any"):
            if not isinstance(vnode, yaml.SequenceNode) or not vnode.value:
                errs.add(vnode, f"{where}.{key}", "expected a non-empty list of conditions")
                return None
            parts = [
                _compile(n, f"{where}.{key}[{i}]", errs, texts) for i, n in enumerate(vnode.value)
            ]
            return _all(parts) if key == "all" else _any(parts)
        if key == "not":
            inner = _compile(vnode, f"{where}.not", errs, texts)
            return None if inner is None else (lambda f: not inner(f))
    errs.add(node, where, "expected a condition string or a mapping with one of all/any/not")
    return None


def _all(parts: list[Condition | None]) -> Condition | None:
    if any(p is None for p in parts):
        return None
    ps = tuple(p for p in parts if p is not None)
    if len(ps) == 1:
        return ps[0]

    def all_of(f: Facts) -> bool:
        for p in ps:  # noqa: SIM110 - a plain loop is about twice as fast as all(generator)
            if not p(f):
                return False
        return True

    return all_of


def _any(parts: list[Condition | None]) -> Condition | None:
    if any(p is None for p in parts):
        return None
    ps = tuple(p for p in parts if p is not None)

    def any_of(f: Facts) -> bool:
        for p in ps:  # noqa: SIM110 - as in all_of
            if p(f):
                return True
        return False

    return any_of


def _check_effect(node: yaml.Node, where: str, errs: _Errors) -> dict[str, dict[str, Any]]:
    if not isinstance(node, yaml.MappingNode) or not node.value:
        errs.add(node, where, "expected a mapping with coupon, message and/or inbox")
        return {}
    out: dict[str, dict[str, Any]] = {}
    spec: dict[str, tuple[set[str], set[str]]] = {  # kind: (required, optional)
        "coupon": ({"template"}, {"valid_until", "grace_days", "valid_days"}),
        "message": ({"template"}, {"channels"}),
        "inbox": ({"role", "template"}, {"priority"}),
    }
    for knode, vnode in node.value:
        kind, w = knode.value, f"{where}.{knode.value}"
        if kind not in spec:
            errs.add(knode, w, f"unknown effect {kind!r}; expected one of {', '.join(spec)}")
            continue
        if not isinstance(vnode, yaml.MappingNode):
            errs.add(vnode, w, "expected a mapping")
            continue
        required, optional = spec[kind]
        body = {k.value: _value(v) for k, v in vnode.value}
        for k, _v in vnode.value:
            if k.value not in required | optional:
                errs.add(
                    k, f"{w}.{k.value}", f"unknown key; expected {sorted(required | optional)}"
                )
        for miss in sorted(required - set(body)):
            errs.add(vnode, f"{w}.{miss}", "is required")
        for k, v in vnode.value:
            val, kw = body[k.value], f"{w}.{k.value}"
            if k.value == "template" and not (isinstance(val, str) and TEMPLATE_RE.match(val)):
                errs.add(v, kw, f"bad template name {val!r}")
            elif k.value == "template" and kind != "coupon" and val not in message_templates():
                errs.add(v, kw, f"no message template {val!r} in {TEMPLATES_DIR} (zh-CN and en)")
            elif k.value == "role" and val not in INBOX_ROLES:
                errs.add(v, kw, f"unknown role {val!r}; expected one of {', '.join(INBOX_ROLES)}")
            elif k.value in ("priority", "grace_days", "valid_days") and (
                not isinstance(val, int) or isinstance(val, bool) or not 0 <= val <= 3650
            ):
                errs.add(v, kw, f"expected an integer 0..3650, got {val!r}")
            elif k.value == "channels" and (
                not isinstance(val, list) or not val or any(c not in CHANNELS for c in val)
            ):
                errs.add(v, kw, f"expected a list out of {list(CHANNELS)}, got {val!r}")
            elif k.value == "valid_until" and (why := check_path(str(val))):
                errs.add(v, kw, why)
        out[kind] = body
    return out


def _rule(node: yaml.Node, where: str, errs: _Errors, path: str) -> Rule | None:
    if not isinstance(node, yaml.MappingNode):
        errs.add(node, where, "a rule must be a mapping")
        return None
    n_before = len(errs.items)
    seen: set[str] = set()
    for knode, key in _keys(node):
        if key in seen:
            errs.add(knode, f"{where}.{key}", "duplicate key")
        seen.add(key)
        if key not in RULE_KEYS:
            errs.add(knode, f"{where}.{key}", f"unknown key; expected one of {sorted(RULE_KEYS)}")
    missing = [
        r for r in ("id", "on", "when", "subject", "period", "effect") if _get(node, r) is None
    ]
    for req in missing:
        errs.add(node, f"{where}.{req}", "is required")
    if missing:
        return None
    rid_node = _get(node, "id")
    rid = str(_value(rid_node)) if rid_node else ""
    where = f"{where} ({rid})"
    if not ID_RE.match(rid):
        errs.add(rid_node, f"{where}.id", f"bad id {rid!r}: lowercase letters, digits and '-'")
    on_node = _get(node, "on")
    on = _value(on_node) if on_node else None
    if on not in EVENT_KINDS:
        errs.add(on_node, f"{where}.on", f"unknown event {on!r}; expected one of {EVENT_KINDS}")
    texts: list[str] = []
    when_node = _get(node, "when")
    assert when_node is not None
    cond = _compile(when_node, f"{where}.when", errs, texts)
    subj_node = _get(node, "subject")
    subject = str(_value(subj_node)) if subj_node else ""
    if subject not in ("vin", "customer") and check_path(subject):
        errs.add(
            subj_node,
            f"{where}.subject",
            f"expected vin, customer or event.<field>, got {subject!r}",
        )
    per_node = _get(node, "period")
    period = str(_value(per_node)) if per_node else ""
    if period not in PERIODS and not (period.startswith("field:") and not check_path(period[6:])):
        errs.add(
            per_node,
            f"{where}.period",
            f"expected one of {PERIODS} or field:<path>, got {period!r}",
        )
    cooldown = None
    if (cd_node := _get(node, "cooldown")) is not None:
        try:
            cooldown = parse_duration(_value(cd_node))
        except ValueError as err:
            errs.add(cd_node, f"{where}.cooldown", str(err))
    limit = None
    if (rl_node := _get(node, "rate_limit")) is not None:
        rl = _value(rl_node)
        try:
            if not isinstance(rl, dict) or set(rl) - {"max", "per", "group"} or "max" not in rl:
                raise ValueError("expected {max: N, per: DURATION, group: NAME}")
            if not isinstance(rl["max"], int) or rl["max"] < 1:
                raise ValueError(f"max must be a positive integer, got {rl['max']!r}")
            limit = RateLimit(
                rl["max"], parse_duration(rl.get("per", "1d")), str(rl.get("group", rid))
            )
        except ValueError as err:
            errs.add(rl_node, f"{where}.rate_limit", str(err))
    effect_node = _get(node, "effect")
    assert effect_node is not None
    effect = _check_effect(effect_node, f"{where}.effect", errs)
    enabled_node = _get(node, "enabled")
    if enabled_node is not None and not isinstance(_value(enabled_node), bool):
        errs.add(enabled_node, f"{where}.enabled", "expected true or false")
    per_owner = subject == "vin"
    if (po_node := _get(node, "per_owner")) is not None:
        if not isinstance(_value(po_node), bool):
            errs.add(po_node, f"{where}.per_owner", "expected true or false")
        elif _value(po_node) and subject == "customer":
            errs.add(po_node, f"{where}.per_owner", "a customer subject is the owner already")
        else:
            per_owner = _value(po_node)
    desc_node = _get(node, "description")
    if len(errs.items) > n_before or cond is None:
        return None
    if enabled_node is not None and _value(enabled_node) is False:
        return None
    return Rule(
        id=rid,
        on=str(on),
        when=cond,
        subject=subject,
        period=period,
        effect=effect,
        cooldown=cooldown,
        rate_limit=limit,
        description=str(_value(desc_node)) if desc_node else "",
        source=f"{path}:{node.start_mark.line + 1}",
        conditions=tuple(texts),
        per_owner=per_owner,
    )


def parse_rules(text: str, path: str = "<string>") -> list[Rule]:
    """Rules from YAML text; every problem is reported in one ``RuleError`` (file:line:col: field)."""
    errs = _Errors(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        pos = f"{mark.line + 1}:{mark.column + 1}" if mark else "?"
        raise RuleError(f"{path}:{pos}: not valid YAML: {getattr(err, 'problem', err)}") from None
    rules: list[Rule] = []
    if root is None:
        return rules
    rules_node = _get(root, "rules") if isinstance(root, yaml.MappingNode) else None
    if rules_node is None or not isinstance(rules_node, yaml.SequenceNode):
        errs.add(rules_node or root, "rules", "expected a top-level 'rules:' list")
    else:
        if isinstance(root, yaml.MappingNode):
            for knode, key in _keys(root):
                if key != "rules":
                    errs.add(knode, key, "unknown top-level key; expected only 'rules'")
        for i, node in enumerate(rules_node.value):
            rule = _rule(node, f"rules[{i}]", errs, path)
            if rule is not None:
                rules.append(rule)
    if errs.items:
        raise RuleError("malformed rules:\n  " + "\n  ".join(errs.items))
    return rules


def load_rules(paths: Iterable[Path | str]) -> list[Rule]:
    """Rules from files and directories (``*.yaml``/``*.yml``, sorted); ids must be unique."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
        elif p.exists():
            files.append(p)
        else:
            raise RuleError(f"{p}: no such rules file or directory")
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    problems: list[str] = []
    for f in files:
        try:
            found = parse_rules(f.read_text(encoding="utf-8"), str(f))
        except RuleError as err:
            problems.append(str(err).removeprefix("malformed rules:\n  "))
            continue
        for r in found:
            if r.id in seen:
                problems.append(f"{r.source}: rules ({r.id}).id: duplicate, first at {seen[r.id]}")
            seen[r.id] = r.source
        rules += found
    if problems:
        raise RuleError("malformed rules:\n  " + "\n  ".join(problems))
    return rules


SHIPPED: Final = Path(__file__).parent / "rules"


def shipped_rules() -> list[Rule]:
    """The rules that ship with carpulse (``crm/rules/*.yaml``)."""
    return load_rules([SHIPPED])
