"""The method specs of ``flowalign gallery`` and the checkpoints they name.

``parse_method("fk:particles=4,potential=max,lambda=10")`` -> ``MethodSpec``: ``KIND[:key=value,...]``
where KIND is ``base``, ``lora`` (first item: the checkpoint) or a steering method of
``flowalign.steering``; a comma starts a new item only when ``key=`` follows it, so
``resample_steps=3,6,9`` (or ``7-14``; ``noise_steps=6-15`` alike) and paths with commas survive. A
steering spec's options become the same ``SteerMethod`` that ``flowalign steer``'s ``method.kind`` /
``method.options.*`` keys build (``lambda`` is ``lam``), and its keyword arguments come from the same
``method_kwargs``. ``resolve_checkpoint`` accepts what ``flowalign train`` writes
(``flowalign.train.checkpoint``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..overrides import apply_override
from ..steering.config import METHODS as STEER_METHODS
from ..steering.config import SteerMethod, method_kwargs

KINDS = ("base", "lora", *STEER_METHODS)
COMMON = ("label", "steps", "cfg", "negative_prompt")  # options every kind takes
SD3_ONLY = {"negative_prompt": "negative prompts need true CFG, which Flux does not run (it uses distilled guidance)"}
ALIASES = {"lambda": "lam"}  # spec key -> SteerMethod option
RAW_KEYS = ("label", "resample_steps", "noise_steps", "negative_prompt", "reward")  # kept as text, not JSON
HINT = "e.g. --method base, --method lora:RUN/checkpoints/last or --method fk:particles=4,potential=max,lambda=10"
_SPLIT = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)")  # commas that start a new key=value
_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$", re.S)
_NUMBERS = {"cfg": (int, float), "lambda": (int, float), "lam": (int, float), "noise_level": (int, float)}
_NUMBERS |= {"particles": int, "nfe_budget": int}


@dataclass
class MethodSpec:
    kind: str  # 'base' | 'lora' | a steering method of flowalign.steering.SEARCH
    label: str  # column name in the tables and the HTML; unique within a gallery
    options: dict[str, Any] = field(default_factory=dict)  # key=value items (values JSON-parsed) but lora
    lora: str | None = None  # checkpoint loaded first (kind 'lora', or lora= on a steering method)
    spec: str = ""  # the text it was parsed from
    labelled: bool = False  # the label came from the spec (label=...), not from the kind
    method: SteerMethod | None = None  # steering kinds: the method config (as `flowalign steer` builds it)

    @property
    def slug(self) -> str:  # file-name form of the label
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", self.label).strip("-") or "method"

    @property
    def steering(self) -> bool:
        return self.kind in STEER_METHODS


def parse_method(text: str) -> MethodSpec:
    """``KIND[:key=value,...]`` -> MethodSpec; one ValueError naming the spec for anything wrong."""
    kind, _, rest = str(text).strip().partition(":")
    kind = kind.strip()
    if kind not in KINDS:
        raise ValueError(f"method spec {text!r}: unknown method {kind!r}; choose one of {list(KINDS)}, {HINT}.")
    opts, lora = _items(text, kind, rest)
    _check_options(text, kind, opts, lora)
    labelled = "label" in opts
    label = str(opts.pop("label", kind))
    method = steer_method(text, kind, opts) if kind in STEER_METHODS else None
    return MethodSpec(kind, label, opts, lora, str(text), labelled, method)


def _items(text: str, kind: str, rest: str) -> tuple[dict[str, Any], str | None]:
    """The ``key=value`` items of a spec (values JSON-parsed but RAW_KEYS) and its checkpoint."""
    opts: dict[str, Any] = {}
    lora = None
    for n, item in enumerate(s.strip() for s in _SPLIT.split(rest) if s.strip()):
        m = _KEY.match(item)
        if m is None and kind == "lora" and n == 0:
            lora = item
            continue
        if m is None:
            raise ValueError(f"method spec {text!r}: {item!r} is not key=value; {HINT}.")
        key, raw = m.group(1), m.group(2).strip()
        if key in opts or (key in ("lora", "path") and lora is not None):
            raise ValueError(f"method spec {text!r}: {key!r} is given twice.")
        if key in ("lora", "path"):
            lora = raw
        else:
            opts[key] = raw if key in RAW_KEYS else _value(raw)
    return opts, lora


def _check_options(text: str, kind: str, opts: dict[str, Any], lora: str | None) -> None:
    if kind == "lora" and not lora:
        raise ValueError(f"method spec {text!r}: lora needs a checkpoint, e.g. lora:runs/testbed/checkpoints/last.")
    if kind == "base" and lora:
        raise ValueError(f"method spec {text!r}: base takes no checkpoint; use lora:{lora}.")
    bad = [k for k in opts if k not in COMMON]
    if kind not in STEER_METHODS and bad:
        raise ValueError(f"method spec {text!r}: unknown option(s) {bad} for {kind}; allowed: {list(COMMON)}.")
    steps = opts.get("steps", 1)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"method spec {text!r}: steps={steps!r} must be an int >= 1.")
    for key, ok in _NUMBERS.items():
        if key in opts and (not isinstance(opts[key], ok) or isinstance(opts[key], bool)):
            what = "an int" if ok is int else "a number"
            raise ValueError(f"method spec {text!r}: {key}={opts[key]!r} must be {what}.")
    cfg = opts.get("cfg", 0)
    if not isinstance(cfg, bool) and isinstance(cfg, (int, float)) and not 0 <= cfg < float("inf"):
        raise ValueError(f"method spec {text!r}: cfg={cfg!r} must be a finite number >= 0 (the guidance scale).")


def steer_method(text: str, kind: str, opts: dict[str, Any]) -> SteerMethod:
    """A steering spec's options (but the gallery's own: label, steps, cfg, negative_prompt, reward) as
    the ``SteerMethod`` of ``flowalign steer``; one error naming every option the method lacks."""
    method = SteerMethod(kind, SteerMethod.options_for(kind)())
    names = [f.name for f in dataclasses.fields(method.options)]
    items = {ALIASES.get(k, k): v for k, v in opts.items() if k not in (*COMMON, "reward")}
    bad = [k for k in items if k not in names]
    if bad:
        raise ValueError(
            f"method spec {text!r}: {kind} takes no option(s) {bad} (steps, cfg and the image size are set "
            f"with steps=, cfg=, --size); its options: {sorted([*names, *ALIASES])}."
        )
    for key, value in items.items():
        try:
            apply_override(method, f"options.{key}={value if isinstance(value, str) else json.dumps(value)}")
        except ValueError as err:
            raise ValueError(f"method spec {text!r}: {err}") from None
    return method


def parse_methods(texts: list[str | MethodSpec]) -> list[MethodSpec]:
    """Parse every spec; unlabelled repeats of a kind become kind-2, kind-3 ...; labels must be unique."""
    specs = [t if isinstance(t, MethodSpec) else parse_method(t) for t in texts]
    if not specs:
        raise ValueError(f"no methods; pass at least one --method, {HINT}.")
    seen: dict[str, int] = {}
    for s in specs:
        if not s.labelled:
            seen[s.kind] = seen.get(s.kind, 0) + 1
            s.label = s.kind if seen[s.kind] == 1 else f"{s.kind}-{seen[s.kind]}"
    slugs = [s.slug for s in specs]
    dup = sorted({s.label for s in specs if slugs.count(s.slug) > 1})
    if dup:
        raise ValueError(
            f"methods {dup} share a label (or its file name); give each a unique label=..., "
            f"e.g. --method fk:particles=8,label=fk8."
        )
    return specs


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def steering_kwargs(spec: MethodSpec, num_steps: int | None = None) -> tuple[dict[str, Any], int]:
    """(keyword arguments of the steering method, particles), built by ``flowalign steer``'s own
    ``method_kwargs`` (DTS without a budget: particles x ``num_steps`` evaluations, as there)."""
    method = spec.method if spec.method is not None else steer_method(spec.spec, spec.kind, spec.options)
    return method_kwargs(method, num_steps), int(method.options.particles)


def check_steering(spec: MethodSpec) -> None:
    """The spec's options are options of its steering method and read as such (one clear error)."""
    steering_kwargs(spec)


# --- checkpoints ------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    kind: str  # 'lora' (pytorch_lora_weights.safetensors) | 'transformer' (full fine-tune)
    path: str  # the folder holding the weights
    run_dir: str | None  # the training run (its tb/ logs feed the training-curve plot), if known


def resolve_checkpoint(path: str) -> Checkpoint:
    """A LoRA folder, a checkpoint folder (``lora/`` or ``transformer/`` inside), a run folder (its
    newest intact checkpoint) or ``<run>/checkpoints/last`` -> Checkpoint whose weights files open
    (and match the checkpoint's manifest when it has one, see ``flowalign.train.checkpoint``); else
    one ValueError naming the path or the damaged file."""
    from ..train.integrity import MANIFEST, verify

    p = Path(os.path.expanduser(path))
    if not p.exists() and p.name in ("last", "latest"):
        run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        p = _newest_intact(run, path) or p
    if p.is_dir() and not (p / "pytorch_lora_weights.safetensors").is_file():
        p = _newest_intact(p, path) or p  # a run directory
    run = p.parent.parent if p.parent.name == "checkpoints" else p.parent if (p.parent / "tb").is_dir() else None
    run_dir = None if run is None else str(run.resolve())
    for sub, kind in (("", "lora"), ("lora", "lora"), ("transformer", "transformer")):
        d = p / sub if sub else p
        marker = "pytorch_lora_weights.safetensors" if kind == "lora" else "config.json"
        if (d / marker).is_file():
            found = Checkpoint(kind, str(d.resolve()), run_dir)
            check_weights(found)
            return found
    problem = verify(p) if (p / MANIFEST).is_file() else None  # a checkpoint whose weights were deleted
    if problem is not None:
        raise ValueError(f"checkpoint {p} is damaged: {problem}; {_advice(Checkpoint('lora', str(p), run_dir))}.")
    what = (
        "does not exist"
        if not p.exists()
        else "holds no LoRA (pytorch_lora_weights.safetensors) or transformer/ weights"
    )
    raise ValueError(
        f"checkpoint {path!r} {what}; pass a LoRA folder, a training checkpoint folder "
        f"(RUN/checkpoints/checkpoint-NNNNNN), a run folder or RUN/checkpoints/last."
    )


def _newest_intact(run: Path, path: str) -> Path | None:
    """The newest intact checkpoint of the run folder ``run`` (see ``train.resume.newest_intact``)."""
    from ..train.resume import newest_intact

    return newest_intact(run, f"checkpoint {path!r}", "pass an intact LoRA folder or train again.")


def _advice(ckpt: Checkpoint) -> str:
    what = "LoRA" if ckpt.kind == "lora" else "fine-tuned transformer"
    return f"re-export the {what}, or pass RUN/checkpoints/last (the newest intact checkpoint of the run)"


def check_weights(ckpt: Checkpoint) -> None:
    """The checkpoint's ``.safetensors`` files open (header and size agree) and, inside a training
    checkpoint with a manifest, match it byte for byte; else one ValueError naming the file."""
    from safetensors import SafetensorError, safe_open

    from ..train.integrity import MANIFEST, unreadable, verify

    d = Path(ckpt.path)
    if d.name in ("lora", "transformer") and (d.parent / MANIFEST).is_file():
        problem = verify(d.parent, under=f"{d.name}/")
        if problem is not None:
            raise ValueError(f"checkpoint {d.parent} is damaged: {problem}; {_advice(ckpt)}.")
    for f in sorted(d.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise unreadable(f, err, _advice(ckpt)) from None


@contextlib.contextmanager
def load_errors(ckpt: Checkpoint) -> Iterator[None]:
    """Inside: loading ``ckpt``'s weights; a safetensors / OS error becomes one ValueError naming them."""
    from safetensors import SafetensorError

    from ..train.integrity import unreadable

    try:
        yield
    except (SafetensorError, OSError) as err:
        files = sorted(Path(ckpt.path).glob("*.safetensors"))
        raise unreadable(files[0] if len(files) == 1 else ckpt.path, err, _advice(ckpt)) from None


def digest(path: str | Path) -> str | None:
    """A cheap content digest of a local model or weights folder (names, sizes and the first and last
    MiB of each weights file), so a retrained model in the same place is noticed."""
    root = Path(path)
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(q for q in root.rglob("*") if q.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(root)}:{size}".encode())
        if f.suffix in (".safetensors", ".bin", ".json"):
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
                if size > 2 << 20:
                    fh.seek(size - (1 << 20))
                    h.update(fh.read())
    return h.hexdigest()[:16]
