"""The one config language of every command: a preset name, then dotted ``key=value`` overrides.

    flowalign train testbed_dense sample.num_steps=8 credit.options.ladder_steps=3
    flowalign steer testbed method.kind=fk method.options.particles=8
    flowalign gallery testbed seeds=0,1,2

Configs are nested dataclasses. ``apply_overrides`` walks the dotted key through them (and into dict
fields, e.g. ``reward.weights.hpsv2=0.5``), parses the value as the field's annotated type
(``coerce``) and reports any mistake as ONE ``ValueError`` naming the key, the value and the fix, with
the same wording in every command (``unknown_key``).

A section with a ``kind`` and an ``options`` field is a *variant* (credit scheme, SDE window,
objective, steering method): its class names the options dataclass of each kind (``options_for``),
so ``credit.kind=dense`` swaps in ``DenseOptions()`` and ``credit.options.ladder_steps=3`` is typed by
it. ``from_dict`` reads a saved config back the same way.

A field whose text form is not the generic one names its own reader in its metadata,
``field(..., metadata={"parse": fn})``: ``fn(text)`` returns the value (e.g. the gallery's
``methods=base,fk:particles=4,lambda=10``, where commas also separate a method's options).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def _coerce_dict(text: str, args: tuple) -> dict:
    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        key, _, value = item.partition(":")
        out[key.strip()] = coerce(value, args[1]) if args and args[1] in (int, float, bool) else value
    return out


def coerce(text: str, tp: Any) -> Any:
    """Parse the override string ``text`` as type ``tp`` (int, float, bool, str, X | None, list, dict)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.strip().lower() in ("none", "null") and type(None) in args:
            return None
        return coerce(text, next(a for a in args if a is not type(None)))
    if tp is bool:
        return _parse_bool(text)
    if tp in (int, float):
        return tp(float(text)) if tp is int and float(text).is_integer() else tp(text)
    if tp is str or tp is Any:
        return text
    if origin is list:
        text = text.strip()
        items = json.loads(text) if text.startswith("[") else [t for t in text.split(",") if t.strip()]
        return [coerce(str(v), args[0]) if args and not isinstance(v, args[0]) else v for v in items]
    if origin is dict:
        return _coerce_dict(text, args)
    raise ValueError(f"cannot parse {text!r} as {tp}")


def unknown_key(key: str, where: str, part: str, names: list[str]) -> ValueError:
    """The one wording of an unknown key, in every command: the key, the section, the closest names."""
    close = difflib.get_close_matches(part, names, n=1)
    hint = f" (did you mean {close})" if close else ""
    return ValueError(f"unknown config key {key!r}: {where} has no field {part!r}{hint}; valid: {names}.")


def is_variant(node: Any) -> bool:
    """A section whose ``options`` are typed by its ``kind`` (its class has ``options_for(kind)``)."""
    return dataclasses.is_dataclass(node) and hasattr(type(node), "options_for")


def carry_options(old: Any, new_cls: type) -> Any:
    """Options of a new kind, keeping the values of the fields both kinds have that differ from the
    old kind's defaults (so ``loss.beta=0.1 loss.objective=nft`` keeps the beta)."""
    if not dataclasses.is_dataclass(old):
        return new_cls()
    defaults = type(old)()
    names = {f.name for f in dataclasses.fields(new_cls)}
    kept = {f.name: getattr(old, f.name) for f in dataclasses.fields(old) if f.name in names}
    return new_cls(**{k: v for k, v in kept.items() if v != getattr(defaults, k)})


def _reader(node: Any, part: str) -> Callable[[str], Any] | None:
    """The field's own text reader (``metadata={"parse": fn}``), if it has one."""
    return next((f.metadata.get("parse") for f in dataclasses.fields(node) if f.name == part), None)


def _set_leaf(node: Any, part: str, value: str, item: str) -> None:
    tp = _hints(type(node))[part]
    parse = _reader(node, part)
    try:
        new = parse(value) if parse is not None else coerce(value, tp)
    except (ValueError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"override {item!r}: cannot read {value!r} as {tp} ({err}).") from None
    if part == "kind" and is_variant(node):
        options_cls = type(node).options_for(new)  # one clear error for an unknown kind
        if type(node.options) is not options_cls:
            node.options = carry_options(node.options, options_cls)
    setattr(node, part, new)


def _set_in_dict(node: dict, parts: list[str], depth: int, key: str, value: str) -> None:
    if depth != len(parts) - 1:
        raise ValueError(f"override {key!r}: nothing below {'.'.join(parts[: depth + 1])!r}.")
    if value.strip()[:1] in "{[":
        node[parts[depth]] = json.loads(value)
    else:
        node[parts[depth]] = coerce(value, float) if _is_number(value) else value


def apply_override(cfg: Any, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ValueError(f"override {item!r} is not key=value; write e.g. sample.num_steps=8.")
    node, parts = cfg, key.strip().split(".")
    for depth, part in enumerate(parts):
        if isinstance(node, dict):  # reward.weights.<name>=w / reward.options.<name>={...}
            return _set_in_dict(node, parts, depth, key, value)
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            raise unknown_key(key, ".".join(parts[:depth]) or "the config", part, names)
        if depth == len(parts) - 1:
            return _set_leaf(node, part, value, item)
        node = getattr(node, part)
        if not dataclasses.is_dataclass(node) and not isinstance(node, dict):
            raise ValueError(f"override {key!r}: {'.'.join(parts[: depth + 1])} is a value, not a section.")
    return None


def apply_overrides(cfg: Any, overrides: list[str], renamed: Mapping[str, str] | None = None) -> Any:
    """Apply dotted ``key=value`` strings to ``cfg`` in place and return it. ``renamed`` maps old keys
    to their new names: an old key still works, with one deprecation warning naming the new key."""
    for item in overrides:
        key, sep, value = item.partition("=")
        new = (renamed or {}).get(key.strip())
        if sep and new is not None:
            warnings.warn(
                f"config key {key.strip()!r} is now {new!r}; write {new}={value}.", FutureWarning, stacklevel=2
            )
            item = f"{new}={value}"
        apply_override(cfg, item)
    return cfg


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any], cls: type) -> Any:
    """Inverse of ``to_dict``; unknown keys are one clear error (a config from another version); a
    variant's ``options`` are read as its kind's options class."""
    hints, kwargs = _hints(cls), {}
    for key, value in data.items():
        if key not in hints:
            raise ValueError(f"config section {cls.__name__} has no field {key!r}; valid: {list(hints)}.")
        tp = hints[key]
        if key == "options" and hasattr(cls, "options_for"):
            tp = cls.options_for(data.get("kind", cls().kind))
        kwargs[key] = from_dict(value, tp) if dataclasses.is_dataclass(tp) and isinstance(value, dict) else value
    return cls(**kwargs)


def split_preset(args: list[str]) -> tuple[str | None, list[str]]:
    """``[preset] key=value ...`` -> (preset or None, overrides): a first word without '=' is the preset."""
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


def get_preset(presets: Mapping[str, Callable[[], Any]], name: str) -> Any:
    """A fresh config from a preset table; one clear error naming the close and the valid names."""
    if name not in presets:
        close = difflib.get_close_matches(name, list(presets), n=3)
        hint = f" (did you mean {close})" if close else ""
        raise ValueError(f"unknown preset {name!r}{hint}; choose one of {sorted(presets)}.")
    return presets[name]()


def resolve(
    presets: Mapping[str, Callable[[], Any]], args: list[str], default: str, renamed: Mapping[str, str] | None = None
) -> Any:
    """``[preset] key=value ...`` -> the preset's config with the overrides applied (every command)."""
    preset, overrides = split_preset(args)
    return apply_overrides(get_preset(presets, preset or default), overrides, renamed)
