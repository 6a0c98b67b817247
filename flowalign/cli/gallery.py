"""``flowalign gallery [PRESET] [key=value ...] [flags]``: prompts x seeds x methods -> images, tables, HTML.

    flowalign gallery --method base --method lora:runs/x/checkpoints/last \\
        --method fk:particles=4,potential=max,lambda=10 --seeds 0,1,2 --out runs/gallery
    flowalign gallery testbed_steering seeds=0,1 out=runs/g

The config is ``flowalign.gallery.GalleryConfig`` (``--print-config`` shows it); the flags are
shorthands for its keys, applied after the positional overrides. Re-run the same command to resume.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..gallery.config import GALLERY_PRESETS
from . import add_config_arguments, bounded, flag_overrides, guarded, print_config

FLAGS = {  # argparse dest -> config key
    "model": "model",
    "method": "methods",
    "prompt": "prompts",
    "prompts_file": "prompts_file",
    "num_prompts": "num_prompts",
    "seeds": "seeds",
    "reward": "rewards",
    "steer_reward": "steer_reward",
    "steps": "steps",
    "cfg": "cfg",
    "size": "size",
    "max_seq": "max_sequence_length",
    "plots": "plots",
    "out": "out",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, GALLERY_PRESETS, "seeds=0,1 methods=base,fk:particles=4")
    add = parser.add_argument
    add("--model", help="'testbed' (default), a registered name (tiny-sd3, tiny-flux), a pipeline folder or a hub id")
    add(
        "--method",
        action="append",
        metavar="SPEC",
        help="repeatable: base | lora:CHECKPOINT | fk:particles=4,potential=max,lambda=10 | bon:particles=8 | "
        "beam | svdd | dts | dts_star (options: see flowalign steer); every kind takes label=, steps=, cfg=; "
        "default: base",
    )
    add(
        "--prompts-file",
        help="prompt file (.txt or .jsonl); default for the testbed: assets/prompts/gallery_testbed.txt",
    )
    add("--prompt", action="append", help="a prompt (repeatable)")
    add("--num-prompts", type=bounded(int, "[1, inf)"), help="use the first N prompts only")
    add("--seeds", help="comma-separated seeds, one image per prompt and seed (default 0,1,2)")
    add(
        "--reward",
        action="append",
        help="reward to score every image with (repeatable; a name in flowalign.rewards.REWARDS or "
        "'package.module:factory'); default for the testbed: compositional, testbed_aesthetic, testbed_artifact",
    )
    add("--steer-reward", help="reward the steering methods use (default: the first --reward)")
    add("--steps", type=bounded(int, "[1, inf)"), help="sampling steps (default: the model's)")
    add("--cfg", type=bounded(float, "[0, inf)"), help="classifier-free guidance scale (default: the model's)")
    add("--size", type=bounded(int, "[1, inf)"), help="image height = width (default: the model's)")
    add("--max-seq", type=bounded(int, "[1, 512]"), help="T5 max_sequence_length (default: 16 for the testbed)")
    add("--no-plots", dest="plots", action="store_const", const=False, help="skip the matplotlib plots")
    add("--out", help="output folder (default runs/gallery; re-run the same command to resume)")


def config_from_args(args: argparse.Namespace):
    """The preset, then the positional overrides, then the flags -> ``GalleryConfig``."""
    from ..overrides import resolve

    return resolve(GALLERY_PRESETS, [*args.config, *flag_overrides(args, FLAGS)], "testbed")


def run(args: argparse.Namespace) -> int:
    def job() -> int:
        cfg = config_from_args(args)
        if args.print_config:
            return print_config(cfg)
        from ..gallery import run_gallery
        from ..gallery.config import validate

        settings = validate(cfg)  # every value, name, file, checkpoint and the output folder, before loading
        res = run_gallery(settings, cfg.out, plots=cfg.plots)
        print(res.table)
        index = Path(cfg.out) / "index.html"
        print(f"{res.generated} new image(s), {len(res.rows)} in all, {res.seconds:.1f} s -> {index}")
        return 0

    return guarded("gallery", job, "interrupted; run the same command again to resume (finished images are kept)")
