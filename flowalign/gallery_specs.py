"""The inputs of ``flowalign gallery``: method specs, the checkpoints they name, the validated
settings and their fingerprint (what must match for an output folder to be resumed).

``parse_method("fk:particles=4,potential=max,lambda=10")`` -> ``MethodSpec``: ``KIND[:key=value,...]``
where KIND is ``base``, ``lora`` (first item: the checkpoint) or a steering method of
``flowalign.steering``; a comma starts a new item only when ``key=`` follows it, so
``resample_steps=3,6,9`` (or ``7-14``; ``noise_steps=6-15`` alike) and paths with commas survive. Steering
options become keyword arguments through ``flowalign steer``'s own ``build_kwargs`` (same aliases, defaults).
``resolve_checkpoint`` accepts what ``flowalign train`` writes (see ``flowalign.checkpoint``).
``make_settings`` checks every input before anything is loaded or written; ``check_out`` refuses
an output folder holding another run's settings."""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .steer_cli import METHODS as STEER_METHODS

DEFAULT_PROMPTS = Path(__file__).resolve().parents[1] / "assets" / "prompts" / "gallery_testbed.txt"
TESTBED_REWARDS = ["compositional", "testbed_aesthetic", "testbed_artifact"]

KINDS = ("base", "lora", *STEER_METHODS)
COMMON = ("label", "steps", "cfg", "negative_prompt")  # options every kind takes
SD3_ONLY = {"negative_prompt": "negative prompts need true CFG, which Flux does not run (it uses distilled guidance)"}
RESERVED = ("num_steps", "sigmas", "height", "width", "generator", "cond", "x", "prompts", "model")
STEER_ALIASES = {
    **{k: k for k in ("particles", "lam", "potential", "resample_steps", "nfe_budget", "noise_level", "noise_steps")},
    "lambda": "lam",
    "step": "step_kind",
}  # spec key -> steer CLI arg
RAW_KEYS = ("label", "resample_steps", "noise_steps", "negative_prompt", "reward")  # kept as text, not JSON
HINT = "e.g. --method base, --method lora:RUN/checkpoints/last or --method fk:particles=4,potential=max,lambda=10"
_SPLIT = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)")  # commas that start a new key=value
_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$", re.S)


@dataclass
class MethodSpec:
    kind: str  # 'base' | 'lora' | a steering method of flowalign.steering.SEARCH
    label: str  # column name in the tables and the HTML; unique within a gallery
    options: dict[str, Any] = field(default_factory=dict)  # key=value items (values JSON-parsed) but lora
    lora: str | None = None  # checkpoint loaded first (kind 'lora', or lora= on a steering method)
    spec: str = ""  # the text it was parsed from
    labelled: bool = False  # the label came from the spec (label=...), not from the kind

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
    if kind == "lora" and not lora:
        raise ValueError(f"method spec {text!r}: lora needs a checkpoint, e.g. lora:runs/testbed/checkpoints/last.")
    if kind == "base" and lora:
        raise ValueError(f"method spec {text!r}: base takes no checkpoint; use lora:{lora}.")
    if kind not in STEER_METHODS:
        bad = [k for k in opts if k not in COMMON]
        if bad:
            raise ValueError(f"method spec {text!r}: unknown option(s) {bad} for {kind}; allowed: {list(COMMON)}.")
    if "steps" in opts and (not isinstance(opts["steps"], int) or isinstance(opts["steps"], bool) or opts["steps"] < 1):
        raise ValueError(f"method spec {text!r}: steps={opts['steps']!r} must be an int >= 1.")
    for key in ("cfg", "lambda", "lam", "noise_level", "particles", "nfe_budget"):
        kind_ok = int if key in ("particles", "nfe_budget") else (int, float)
        if key in opts and (not isinstance(opts[key], kind_ok) or isinstance(opts[key], bool)):
            what = "an int" if kind_ok is int else "a number"
            raise ValueError(f"method spec {text!r}: {key}={opts[key]!r} must be {what}.")
    labelled = "label" in opts
    return MethodSpec(kind, str(opts.pop("label", kind)), opts, lora, str(text), labelled)


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


def steering_kwargs(spec: MethodSpec) -> tuple[dict[str, Any], int]:
    """(keyword arguments of the steering method, particles) built by ``flowalign steer``'s
    ``build_kwargs`` from the spec (same aliases and defaults as that command line)."""
    from . import steer_cli

    parser = argparse.ArgumentParser(add_help=False)
    steer_cli.add_arguments(parser)
    ns = parser.parse_args([])
    ns.method, extra = spec.kind, []
    for key, value in spec.options.items():
        if key in STEER_ALIASES:
            setattr(ns, STEER_ALIASES[key], value)
        elif key not in (*COMMON, "reward"):
            extra.append(f"{key}={value if isinstance(value, str) else json.dumps(value)}")
    ns.set = extra
    return steer_cli.build_kwargs(ns), int(ns.particles)


def check_steering(spec: MethodSpec) -> None:
    """Every option must be a keyword of the steering function that the gallery does not set itself."""
    from .steering import SEARCH

    kwargs, _ = steering_kwargs(spec)
    params = inspect.signature(SEARCH[spec.kind]).parameters
    bad = [k for k in kwargs if k not in params or k in RESERVED]
    if bad:
        raise ValueError(
            f"method spec {spec.spec!r}: {spec.kind} takes no option(s) {bad} (steps, cfg and "
            f"the image size are set with steps=, cfg=, --size); its keywords: "
            f"{sorted(k for k in params if k not in RESERVED and k not in ('reward',))}."
        )


# --- checkpoints ------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    kind: str  # 'lora' (pytorch_lora_weights.safetensors) | 'transformer' (full fine-tune)
    path: str  # the folder holding the weights
    run_dir: str | None  # the training run (its tb/ logs feed the training-curve plot), if known


def resolve_checkpoint(path: str) -> Checkpoint:
    """A LoRA folder, a checkpoint folder (``lora/`` or ``transformer/`` inside), a run folder (its
    latest complete checkpoint) or ``<run>/checkpoints/last`` -> Checkpoint; else one ValueError."""
    from .checkpoint import latest

    p = Path(os.path.expanduser(path))
    if not p.exists() and p.name in ("last", "latest"):
        run = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        p = latest(run) or p
    if p.is_dir() and not (p / "pytorch_lora_weights.safetensors").is_file() and latest(p) is not None:
        p = latest(p)  # a run directory
    run = p.parent.parent if p.parent.name == "checkpoints" else p.parent if (p.parent / "tb").is_dir() else None
    run_dir = None if run is None else str(run.resolve())
    for sub, kind in (("", "lora"), ("lora", "lora"), ("transformer", "transformer")):
        d = p / sub if sub else p
        marker = "pytorch_lora_weights.safetensors" if kind == "lora" else "config.json"
        if (d / marker).is_file():
            return Checkpoint(kind, str(d.resolve()), run_dir)
    what = (
        "does not exist"
        if not p.exists()
        else "holds no LoRA (pytorch_lora_weights.safetensors) or transformer/ weights"
    )
    raise ValueError(
        f"checkpoint {path!r} {what}; pass a LoRA folder, a training checkpoint folder "
        f"(RUN/checkpoints/checkpoint-NNNNNN), a run folder or RUN/checkpoints/last."
    )


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


# --- settings ---------------------------------------------------------------------------------------
@dataclass
class GallerySettings:
    model: str  # 'testbed', a name in models.MODELS, a saved pipeline folder or a hub id
    methods: list[MethodSpec]
    prompts: list[str]  # [P]
    seeds: list[int]  # [S]
    rewards: list[str]  # reward names (flowalign.rewards.REWARDS) or 'package.module:factory'
    steer_reward: str  # the reward steering methods use unless their spec says reward=
    steps: int | None = None  # None: the model's default (testbed: its assets' sampling config)
    cfg: float | None = None  # None: the model's default guidance
    size: int | None = None  # image height = width; None: the model's default
    max_sequence_length: int | None = None  # T5 tokens; None: the testbed preset's 16, else the model's
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)  # label -> resolved checkpoint
    metadata: list[dict] = field(default_factory=list)  # [P] .jsonl columns per prompt, passed to the rewards

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a folder's images to be reused (stored as settings.json)."""
        from .train_cli import resolve_model_path

        path = resolve_model_path(self.model)
        methods = [
            {
                "label": m.label,
                "kind": m.kind,
                "options": m.options,
                "checkpoint": None
                if m.label not in self.checkpoints
                else {"path": self.checkpoints[m.label].path, "digest": digest(self.checkpoints[m.label].path)},
            }
            for m in self.methods
        ]
        return {
            "format": 1,
            "model": self.model,
            "model_path": path,
            "model_digest": digest(path),
            "methods": methods,
            "prompts": self.prompts,
            "seeds": self.seeds,
            "rewards": self.rewards,
            "steer_reward": self.steer_reward,
            "steps": self.steps,
            "cfg": self.cfg,
            "size": self.size,
            "max_sequence_length": self.max_sequence_length,
            "metadata": self.metadata if any(self.metadata) else None,
        }


def make_settings(
    model: str = "testbed",
    methods: list[str | MethodSpec] = ("base",),
    *,
    prompts: list[str] | None = None,
    prompts_file: str | None = None,
    num_prompts: int | None = None,
    seeds: list[int] = (0, 1, 2),
    rewards: list[str] | None = None,
    steer_reward: str | None = None,
    steps: int | None = None,
    cfg: float | None = None,
    size: int | None = None,
    max_sequence_length: int | None = None,
) -> GallerySettings:
    """Validate every input (nothing heavy is loaded, nothing written) -> GallerySettings."""
    from .data import load_prompts
    from .rewards import REWARDS
    from .train_cli import import_factory, resolve_model_path

    specs = parse_methods(list(methods))
    resolve_model_path(model)
    if prompts is None and prompts_file is None:
        if model != "testbed":
            raise ValueError("no prompts: pass --prompts-file FILE (one prompt per line) or --prompt TEXT.")
        prompts_file = str(DEFAULT_PROMPTS)
    loaded = load_prompts(prompts_file) if prompts_file else None
    texts = list(prompts or []) + (loaded.prompts if loaded else [])
    meta = [{} for _ in prompts or []] + (list(loaded.metadata) if loaded else [])
    texts, meta = (texts[:num_prompts], meta[:num_prompts]) if num_prompts else (texts, meta)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"no prompts (got {texts!r}); pass --prompts-file FILE or --prompt TEXT.")
    seeds = list(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ValueError(f"seeds={seeds!r} must be distinct ints >= 0, e.g. --seeds 0,1,2.")
    rewards = list(rewards) if rewards else (list(TESTBED_REWARDS) if model == "testbed" else [])
    if not rewards:
        raise ValueError(f"no rewards: pass --reward NAME (repeatable), one of {sorted(REWARDS)}.")
    steer_reward = steer_reward or rewards[0]
    for name in {*rewards, steer_reward, *(m.options.get("reward") for m in specs if m.options.get("reward"))}:
        if ":" in name:
            import_factory(name)
        elif name not in REWARDS:
            raise ValueError(
                f"unknown reward {name!r}; choose one of {sorted(REWARDS)} or give your own as "
                f"'package.module:factory'."
            )
    if len(set(rewards)) != len(rewards):
        raise ValueError(f"rewards {rewards} name one reward twice.")
    for m in specs:
        if m.steering:
            check_steering(m)
    ckpts = {m.label: resolve_checkpoint(m.lora) for m in specs if m.lora}
    return GallerySettings(
        model, specs, texts, seeds, rewards, steer_reward, steps, cfg, size, max_sequence_length, ckpts, meta
    )


def check_out(out: Path, fingerprint: dict[str, Any]) -> bool:
    """True when ``out`` holds this same gallery (resume); one ValueError when it holds another one."""
    settings, results = out / "settings.json", out / "results.jsonl"
    if out.exists() and not out.is_dir():
        raise ValueError(f"output folder {out} is a file; pass a folder with --out.")
    if settings.is_file():
        old = json.loads(settings.read_text(encoding="utf-8"))
        diff = sorted(k for k in {*old, *fingerprint} if old.get(k) != fingerprint.get(k))
        if diff:
            raise ValueError(
                f"output folder {out} holds another gallery run with different settings "
                f"({', '.join(diff)} differ); nothing was changed. Pass a new --out (e.g. --out "
                f"{out}-2), or the same settings to resume that run."
            )
        return True
    if results.exists():
        raise ValueError(
            f"output folder {out} holds results.jsonl but no settings.json (not a gallery of this "
            f"version); nothing was changed. Pass a new --out."
        )
    return False
