"""Declared ranges of numeric config fields, and the one validator that checks them all.

A field declares its range beside its default: ``lr: float = ranged(3e-4, "(0, inf)")``. A rule is
an interval with open ``(`` / closed ``[`` ends (``inf`` for no bound; ``(0, inf]`` admits ``inf``
itself), or ``"free"`` for a value whose sign is legitimately free (a reward weight, a seed): any
finite number. A list field's rule applies to every entry; ``None`` passes (it means "off").
``check_ranges(cfg)`` walks a config (nested dataclasses, a variant's typed options included) and
raises ONE ValueError naming the dotted key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any

FREE = "free"


def ranged(default: Any, rule: str, **kwargs: Any) -> Any:
    """A dataclass field with a declared range (a list default is copied per instance)."""
    meta = {**kwargs.pop("metadata", {}), "range": rule}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kwargs)
    return field(default=default, metadata=meta, **kwargs)


def parse_rule(rule: str) -> tuple[float, float, bool, bool]:
    """``"(0, inf]"`` -> (lo, hi, lo_closed, hi_closed); ``"free"`` -> any finite number."""
    if rule == FREE:
        return -math.inf, math.inf, False, False
    text = rule.strip()
    lo_text, _, hi_text = text[1:-1].partition(",")
    return float(lo_text), float(hi_text), text[0] == "[", text[-1] == "]"


def in_range(value: float, rule: str) -> bool:
    lo, hi, lo_closed, hi_closed = parse_rule(rule)
    if math.isnan(value):
        return False
    above = value >= lo if lo_closed else value > lo
    below = value <= hi if hi_closed else value < hi
    return above and below


def _explain(rule: str) -> str:
    if rule == FREE:
        return "any finite number"
    lo, hi, lo_closed, hi_closed = parse_rule(rule)
    parts = []
    if lo != -math.inf:
        parts.append(f"{'>=' if lo_closed else '>'} {lo:g}")
    if hi != math.inf or hi_closed:
        parts.append(f"{'<=' if hi_closed else '<'} {hi:g}")
    return " and ".join(parts) + f" (the range {rule})"


def _numbers(value: Any) -> list[float] | None:
    """The numbers a value holds (a number, or a list / dict of numbers), or None if not numeric."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return [float(v) for v in value]
    if isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
        return [float(v) for v in value.values()]
    return None


def check_ranges(cfg: Any, prefix: str = "") -> None:
    """Every declared range of ``cfg`` (recursively): one ValueError for the first value outside."""
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{key}.")
            continue
        rule = f.metadata.get("range")
        numbers = _numbers(value)
        if rule is None or numbers is None:
            continue
        bad = [v for v in numbers if not in_range(v, rule)]
        if bad:
            shown = value if not isinstance(value, (list, tuple, dict)) else f"{value} (entry {bad[0]:g})"
            raise ValueError(f"{key}={shown} is out of range: it must be {_explain(rule)}.")


def undeclared(cls: type, prefix: str = "") -> list[str]:
    """Numeric fields of a config class (recursively, through default instances) with no range."""
    out = []
    instance = cls()
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value):
            out += undeclared(type(value), f"{prefix}{f.name}.")
        elif "range" not in f.metadata and (_is_numeric_type(f.type) or _numeric_value(value, f.type)):
            out.append(f"{prefix}{f.name}")
    return out


def _numeric_value(value: Any, tp: Any) -> bool:
    """A number (or list of numbers) by its default, unless the annotation says strings (an empty list[str])."""
    return _numbers(value) is not None and "str" not in str(tp)


def _is_numeric_type(tp: Any) -> bool:
    text = str(tp)
    return any(t in text for t in ("int", "float")) and "str" not in text and "bool" not in text.split("|")[0]
