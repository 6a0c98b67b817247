"""``flowalign plan PRESET [key=value ...]``: peak memory per GPU by part (the transformer's training
state, its text encoders and VAE), FLOPs per iteration and an estimated iteration time for a training
preset on N GPUs (``flowalign.plan``), without its weights; a few seconds past the imports.

    flowalign plan sd35_pickscore --gpus 8 --json
    flowalign plan flux_hpsv2 --gpus 16 --strategy fsdp --gpu a100-80 --mfu 0.35
    flowalign plan sd35_pickscore sample.batch_size=4 --gpus 8

Bad input (an unknown strategy or GPU, a batch that does not split over the GPUs, a model whose
transformer config cannot be read offline) is one error line before anything is built.
"""

from __future__ import annotations

import argparse
import json

from . import add_config_arguments, bounded, guarded


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train.presets import PRESETS

    add_config_arguments(parser, PRESETS, "sd35_pickscore sample.batch_size=4")
    parser.add_argument("--gpus", type=bounded(int, "[1, inf)"), default=8, help="GPUs (ranks); default 8")
    parser.add_argument("--strategy", default="ddp", help="ddp | fsdp | zero2 (default ddp)")
    parser.add_argument("--gpu", default="h100", help="h100 | a100-80 | a100-40 | l40s | 4090 (default h100)")
    parser.add_argument("--mfu", type=bounded(float, "(0, 1]"), default=0.4, help="model FLOPs utilisation (0.4)")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")


def resolve(args: argparse.Namespace):
    from ..train import apply_overrides, get_preset

    items = list(args.config)
    name = items.pop(0) if items and "=" not in items[0] else "testbed"
    return apply_overrides(get_preset(name), items)


def table(p: dict) -> str:
    mem = p["memory_gb_per_gpu"]
    rows = [
        f"{p['preset']}: {p['model']} ({p['class']}) on {p['gpus']} x {p['gpu']}, {p['strategy']}, MFU {p['mfu']}",
        f"  params {p['params'] / 1e9:.3f} B, trainable {p['trainable_params'] / 1e6:.2f} M; text encoders "
        f"{p['params_text_encoders'] / 1e9:.3f} B, VAE {p['params_vae'] / 1e6:.1f} M (frozen)",
        "  memory per GPU (GB): "
        + ", ".join(f"{k} {v}" for k, v in mem.items())
        + ("" if p["fits"] else "  DOES NOT FIT"),
        f"  FLOPs per iteration {p['flops_per_iteration'] / 1e15:.1f} PFLOP ({p['images_per_iteration']} images)",
        f"  est. {p['est_seconds_per_iteration']} s per iteration",
    ]
    return "\n".join(rows)


def run(args: argparse.Namespace) -> int:
    def job() -> int:
        from ..plan import check_plan, plan

        cfg = resolve(args)
        if args.print_config:
            from . import print_config

            return print_config(cfg)
        check_plan(cfg, args.gpus, args.strategy, args.gpu, args.mfu)  # before anything is built
        p = plan(cfg, args.gpus, args.strategy, args.gpu, args.mfu)
        print(json.dumps(p) if args.json else table(p))
        return 0

    return guarded("plan", job, "flowalign plan: interrupted.")
