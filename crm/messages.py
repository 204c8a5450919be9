"""Message templates in zh-CN and en (``crm/templates/<lang>.yaml``) and their rendering.

A template is ``{subject, body}`` with ``${name}`` placeholders (``string.Template``: no code, no
attribute access). A placeholder the facts do not provide is left visible rather than failing.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import yaml

from core.errors import ConfigError

TEMPLATES_DIR: Final = Path(__file__).parent / "templates"
LANGS: Final = ("zh-CN", "en")
DEFAULT_LANG: Final = "zh-CN"


@functools.cache
def _catalogue(lang: str) -> dict[str, dict[str, str]]:
    path = TEMPLATES_DIR / f"{lang}.yaml"
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: cannot read message templates: {err}") from err
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of template name -> {{subject, body}}")
    for name, tpl in doc.items():
        if not isinstance(tpl, dict) or set(tpl) != {"subject", "body"}:
            raise ConfigError(f"{path}: template {name!r} needs exactly 'subject' and 'body'")
    return doc


@functools.cache
def message_templates() -> frozenset[str]:
    """Names of the templates present in every language."""
    names = [set(_catalogue(lang)) for lang in LANGS]
    return frozenset(set.intersection(*names))


def render(name: str, lang: str, facts: Mapping[str, Any]) -> tuple[str, str]:
    """``(subject, body)`` of template ``name`` in ``lang`` (falls back to zh-CN)."""
    cat = _catalogue(lang if lang in LANGS else DEFAULT_LANG)
    if name not in cat:
        raise ConfigError(f"no message template {name!r} for {lang}")
    flat = flatten(facts)
    tpl = cat[name]
    return (
        string.Template(tpl["subject"]).safe_substitute(flat).strip(),
        string.Template(tpl["body"]).safe_substitute(flat).strip(),
    )


def flatten(facts: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"event": {"days": 3}}`` -> ``{"event_days": "3"}`` (Template names cannot hold dots)."""
    out: dict[str, str] = {}
    for key, value in facts.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "_"))
        elif isinstance(value, float):
            out[name] = f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"
        else:
            out[name] = str(value)
    return out
