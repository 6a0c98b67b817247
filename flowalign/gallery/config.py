"""The config of ``flowalign gallery`` and its presets, and the validated settings made from it.

    flowalign gallery testbed seeds=0,1 methods=base,fk:particles=4,lambda=10 out=runs/g

``GalleryConfig`` is what the command line sets (``[PRESET] key=value ...`` and the flags, see
``flowalign.cli.gallery``); ``methods`` is a list of method specs (``KIND[:key=value,...]``, see
``specs.py``), written comma-separated (a comma followed by a method kind starts the next spec) or as
a JSON list. ``make_settings`` checks every input before anything is loaded or written and returns the
``GallerySettings`` that ``run_gallery`` draws; their ``fingerprint`` is what must match for an
output folder to be resumed (``check_out``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..inputs import check_model, check_output, check_size, check_testbed_prompts
from ..ranges import ranged
from ..steering.config import check_method
from .specs import KINDS, Checkpoint, MethodSpec, check_steering, digest, parse_methods, resolve_checkpoint

DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "assets" / "prompts" / "gallery_testbed.txt"
TESTBED_REWARDS = ["compositional", "testbed_aesthetic", "testbed_artifact"]
_KIND = "|".join(sorted(KINDS, key=len, reverse=True))
_NEXT_SPEC = re.compile(rf",(?=\s*(?:{_KIND})\s*(?::|,|$))")  # a comma followed by a method kind starts a spec


def split_methods(text: str) -> list[str]:
    """``'base,fk:particles=4,lambda=10,lora:RUN'`` -> one spec per method (or a JSON list of specs)."""
    text = text.strip()
    if text.startswith("["):
        specs = json.loads(text)
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
            raise ValueError(f"expected a JSON list of method specs, got {text!r}")
        return specs
    return [s.strip() for s in _NEXT_SPEC.split(text) if s.strip()]


@dataclass
class GalleryConfig:
    preset: str = "testbed"  # the preset this config started from (informational)
    model: str = "testbed"  # 'testbed', a registered name (tiny-sd3, tiny-flux), a saved pipeline folder or a hub id
    methods: list[str] = field(default_factory=lambda: ["base"], metadata={"parse": split_methods})  # specs
    prompts: list[str] = field(default_factory=list)  # prompts (before prompts_file's)
    prompts_file: str | None = None  # .txt or .jsonl; none given, for the testbed: assets/prompts/gallery_testbed.txt
    num_prompts: int | None = ranged(None, "[1, inf)")  # use the first N prompts only
    seeds: list[int] = ranged([0, 1, 2], "[0, inf)")  # one image per prompt and seed
    rewards: list[str] = field(default_factory=list)  # scorers of every image; [] for the testbed: TESTBED_REWARDS
    steer_reward: str | None = None  # the reward steering methods use; None: the first of rewards
    steps: int | None = ranged(None, "[1, inf)")  # sampling steps; None: the model's
    cfg: float | None = ranged(None, "[0, inf)")  # classifier-free guidance scale; None: the model's
    size: int | None = ranged(None, "[1, inf)")  # image height = width; None: the model's
    # T5 tokens; None: the testbed preset's 16, else the model's
    max_sequence_length: int | None = ranged(None, "[1, 512]")
    num_frames: int | None = ranged(None, "[1, inf)")  # frames of a video model (wan: 4k+1); None: the model's
    plots: bool = True  # the matplotlib plots
    out: str = "runs/gallery"  # output folder (run the same command again to resume)


def _steering() -> GalleryConfig:
    fk = "fk:particles=4,potential=rt,resample_steps=7-14,noise_steps=6-15,label=fk_tuned"
    return GalleryConfig(preset="testbed_steering", methods=["base", "bon:particles=4", fk])


GALLERY_PRESETS: dict[str, Callable[[], GalleryConfig]] = {
    # the base pipeline on the shipped gallery prompts, seeds 0, 1, 2, scored by the three testbed rewards
    "testbed": GalleryConfig,
    # base vs best-of-4 vs FK with 4 particles as tuned on the testbed (equal NFE for bon and fk)
    "testbed_steering": _steering,
    # a smoke run: 4 prompts, one seed
    "testbed_quick": lambda: GalleryConfig(preset="testbed_quick", num_prompts=4, seeds=[0]),
}


@dataclass
class GallerySettings:
    model: str  # 'testbed', a name in models.MODELS, a saved pipeline folder or a hub id
    methods: list[MethodSpec]
    prompts: list[str]  # [P]
    seeds: list[int]  # [S]
    rewards: list[str]  # reward names (flowalign.rewards.REWARDS) or 'package.module:factory'
    steer_reward: str  # the reward steering methods use unless their spec says reward=
    steps: int | None = ranged(None, "[1, inf)")  # None: the model's default (testbed: its assets' sampling config)
    cfg: float | None = ranged(None, "[0, inf)")  # None: the model's default guidance
    size: int | None = ranged(None, "[1, inf)")  # image height = width; None: the model's default
    # T5 tokens; None: the testbed preset's 16, else the model's
    max_sequence_length: int | None = ranged(None, "[1, 512]")
    checkpoints: dict[str, Checkpoint] = field(default_factory=dict)  # label -> resolved checkpoint
    metadata: list[dict] = field(default_factory=list)  # [P] .jsonl columns per prompt, passed to the rewards
    num_frames: int | None = ranged(None, "[1, inf)")  # frames of a video model; None: the model's default

    def fingerprint(self) -> dict[str, Any]:
        """What must match for a folder's images to be reused (stored as settings.json); settings that
        do not pass ``check_settings`` are refused first (``run_gallery`` starts here)."""
        from ..train.build import resolve_model_path

        check_settings(self)
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
        } | ({"num_frames": self.num_frames} if self.num_frames is not None else {})


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
    num_frames: int | None = None,
) -> GallerySettings:
    """Validate every input (nothing heavy is loaded, nothing written) -> GallerySettings."""
    specs = parse_methods(list(methods))
    check_model(model)
    if num_prompts is not None and (
        not isinstance(num_prompts, int) or isinstance(num_prompts, bool) or num_prompts < 1
    ):
        raise ValueError(f"num_prompts={num_prompts!r} must be an int >= 1 (or unset: every prompt).")
    texts, meta = _prompts(model, prompts, prompts_file, num_prompts)
    seeds = list(seeds)
    rewards = list(rewards) if rewards else (list(TESTBED_REWARDS) if model == "testbed" else [])
    steer_reward = steer_reward or (rewards[0] if rewards else None)
    _check_rewards(rewards, steer_reward, specs)
    for m in specs:
        if m.steering:
            check_steering(m)
    settings = GallerySettings(
        model, specs, texts, seeds, rewards, steer_reward, steps, cfg, size, max_sequence_length, {}, meta, num_frames
    )
    check_settings(settings)
    settings.checkpoints = {m.label: resolve_checkpoint(m.lora) for m in specs if m.lora}
    return settings


def check_settings(s: GallerySettings) -> None:
    """The numbers (declared ranges), seeds, image size and every steering column on the grid it will
    sample, and shapes-world prompts for the compositional reward; one ValueError naming the argument."""
    from ..ranges import check_ranges

    check_ranges(s)
    if not s.seeds or len(set(s.seeds)) != len(s.seeds) or not all(type(x) is int and x >= 0 for x in s.seeds):
        raise ValueError(f"seeds={s.seeds!r} must be distinct ints >= 0, e.g. --seeds 0,1,2.")
    facts = check_model(s.model)
    check_size(s.size, facts, "size")
    if s.num_frames is not None:
        from ..train.families import check_frames

        check_frames(s.model, s.num_frames)
    for m in s.methods:
        if m.method is not None:
            steps = m.options.get("steps") or s.steps or facts.get("steps")
            check_method(m.method, "", steps, where=f"method spec {m.spec!r}: ")
    rewards = {*s.rewards, s.steer_reward, *(m.options.get("reward") for m in s.methods if m.steering)}
    if "compositional" in rewards:
        check_testbed_prompts(s.prompts, "reward")


def validate(cfg: GalleryConfig) -> GallerySettings:
    """Every check of ``flowalign gallery`` that needs no model (values, names, files, checkpoints and
    the output folder; nothing is loaded or written) -> the settings ``run_gallery`` draws."""
    from ..ranges import check_ranges

    check_ranges(cfg)
    check_output(cfg.out, "out")
    return settings_from_config(cfg)


def settings_from_config(cfg: GalleryConfig) -> GallerySettings:
    """``make_settings`` of a ``GalleryConfig`` (empty prompts / rewards: the model's defaults)."""
    return make_settings(
        cfg.model,
        cfg.methods,
        prompts=cfg.prompts or None,
        prompts_file=cfg.prompts_file,
        num_prompts=cfg.num_prompts,
        seeds=cfg.seeds,
        rewards=cfg.rewards or None,
        steer_reward=cfg.steer_reward,
        steps=cfg.steps,
        cfg=cfg.cfg,
        size=cfg.size,
        max_sequence_length=cfg.max_sequence_length,
        num_frames=cfg.num_frames,
    )


def _prompts(
    model: str, prompts: list[str] | None, prompts_file: str | None, num_prompts: int | None
) -> tuple[list[str], list[dict]]:
    """(prompts, their .jsonl metadata columns): the given ones, then the file's; one clear error if none."""
    from ..train.data import load_prompts

    if prompts is None and prompts_file is None:
        if model != "testbed":
            raise ValueError("no prompts: pass --prompts-file FILE (one prompt per line) or --prompt TEXT.")
        prompts_file = str(DEFAULT_PROMPTS)
    loaded = load_prompts(prompts_file) if prompts_file else None
    texts = list(prompts or []) + (loaded.prompts if loaded else [])
    meta = [{} for _ in prompts or []] + ([_rooted(m, loaded.root) for m in loaded.metadata] if loaded else [])
    texts, meta = (texts[:num_prompts], meta[:num_prompts]) if num_prompts else (texts, meta)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise ValueError(f"no prompts (got {texts!r}); pass --prompts-file FILE or --prompt TEXT.")
    return texts, meta


def _rooted(row: dict, root: str | None) -> dict:
    """A .jsonl row with its source-image path (``image``) made absolute (relative to the file's folder)."""
    from ..train.data import SOURCE_COLUMN

    value = row.get(SOURCE_COLUMN)
    if not isinstance(value, str) or root is None or Path(value).expanduser().is_absolute():
        return row
    return {**row, SOURCE_COLUMN: str(Path(root) / value)}


def _check_rewards(rewards: list[str], steer_reward: str | None, specs: list[MethodSpec]) -> None:
    from ..rewards import REWARDS
    from ..train.build import import_factory

    if not rewards:
        raise ValueError(f"no rewards: pass --reward NAME (repeatable), one of {sorted(REWARDS)}.")
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


def check_out(out: Path, fingerprint: dict[str, Any]) -> bool:
    """True when ``out`` holds this same gallery (resume); one ValueError when it holds another one."""
    settings, results = out / "settings.json", out / "results.jsonl"
    check_output(str(out), "out")  # not a file, below a writable folder
    if settings.is_file():
        try:
            old = json.loads(settings.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(
                f"output folder {out} holds an unreadable settings.json ({err}); pass a new --out."
            ) from None
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
