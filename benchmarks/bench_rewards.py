"""Rewards benchmark: equivalence with the reference packages, reward-ladder NFE, scorer throughput.

    python benchmarks/bench_rewards.py [--quick]

1. HPSv2 / ImageReward vs the ``hpsv2x`` / ``image-reward`` packages' models on identical random
   weights and inputs (max abs diff): reduced configs with --quick, ViT-H-14 / BLIP ViT-L + BERT-base
   otherwise (tests/test_rewards_equivalence.py holds the harness).
2. Reward ladder NFE for a group of 8 samples x 10 steps on the analytic Gaussian-mixture flow,
   divided by the naive cost: every state completed separately with all its remaining steps,
   8 x (10 + 9 + ... + 1) = 440 NFE. Several rollout / ladder settings are reported; the headline
   ``ladder_nfe_vs_naive`` is the exact ladder (all remaining steps, no approximation) on a
   Flow-GRPO-Fast-style rollout (SDE window of 4 steps, then ODE), with the rollout's x0_preds kept.
3. images/s of every scorer with random weights on a fixed batch (4 images, 256 px, no grad):
   tiny towers with --quick, the published architectures otherwise.
4. HPSv3 vs the ``hpsv3`` package's own code on a tiny Qwen2-VL, in its pinned venv
   (scripts/hpsv3_reference; ``null`` with the reason printed when that venv cannot be built).
Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = [
    "a red circle left of two blue squares",
    "a photo of a cat on the hill",
    "three green triangles",
    "a red circle",
]


def equivalence(quick: bool) -> dict:
    import test_rewards_equivalence as eq

    from flowalign.rewards import tiny

    out = {}
    g = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        arch = tiny.register_open_clip() if quick else "ViT-H-14"
        images = torch.rand(2, 3, 200, 256, generator=g)
        out["hpsv2"] = eq.hps_diff(Path(d), arch, images, PROMPTS[:2])
    with tempfile.TemporaryDirectory() as d:
        images = torch.rand(2, 3, 256, 200, generator=g)
        med, vit = (tiny.tiny_med_config(), tiny.TINY_VIT) if quick else (eq.FULL_MED, None)
        out["imagereward"] = eq.imagereward_diff(Path(d), images, PROMPTS[:2], med, vit)
    return out


def ladder_scenarios() -> dict:
    from flowalign.models.analytic import GaussianMixtureFlow
    from flowalign.rewards.ladder import RewardLadder
    from flowalign.sampling.rollout import complete, rollout
    from flowalign.sampling.schedule import linear_sigmas, noise_table, window_mask

    class Counted(GaussianMixtureFlow):  # counts model calls (batched invocations) besides NFE (rows)
        calls = 0

        def velocity(self, x, sigma, cond=None):
            self.calls += 1
            return super().velocity(x, sigma, cond)

    b, t, d = 8, 10, 16
    g = torch.Generator().manual_seed(0)
    model = Counted(2 * torch.randn(4, d, generator=g), 0.3 + torch.rand(4, generator=g))
    c = torch.randn(d, generator=g)
    reward = lambda x, prompts, **m: x @ c  # noqa: E731  (decode of the analytic flow is the identity)
    sigmas, cond = linear_sigmas(t), model.encode(["a prompt"] * b)
    flow_grpo = noise_table(t, 0.7)  # SDE on steps 0..8, ODE on the last (Flow-GRPO)
    fast = noise_table(t, 0.7, window_mask(t, 4))  # SDE on steps 0..3 (Flow-GRPO-Fast / MixGRPO window)
    cases = {  # name: (noise table, shared initial noise, keep x0_preds, ladder kwargs)
        "fast_window_exact": (fast, False, True, {}),
        "flow_grpo_exact": (flow_grpo, False, True, {}),
        "flow_grpo_exact_no_x0": (flow_grpo, False, False, {}),
        "flow_grpo_shared_xT_exact": (flow_grpo, True, True, {}),
        "flow_grpo_stride2": (flow_grpo, False, True, {"stride": 2}),
        "fast_window_stride2": (fast, False, True, {"stride": 2}),
        "flow_grpo_x0_pred": (flow_grpo, False, True, {"mode": "x0"}),
    }
    res = {}
    for name, (levels, shared, keep, kw) in cases.items():
        x = model.initial_noise(1 if shared else b, generator=torch.Generator().manual_seed(1))
        x = x.repeat(b, 1) if shared else x
        ro = rollout(
            model, cond, x, sigmas, "flow_sde", levels, generator=torch.Generator().manual_seed(2), keep_x0=keep
        )
        calls0 = model.calls
        out = RewardLadder(model, reward, **kw)(ro, cond)
        calls = model.calls - calls0
        calls0, nfe0, naive = model.calls, model.nfe, torch.empty(b, t + 1)
        for bi in range(b):  # the naive ladder: each state of each sample completed on its own
            for j in range(t + 1):
                xs, _ = complete(model, cond.select([bi]), ro.latents[bi : bi + 1, j], sigmas, j)
                naive[bi, j] = reward(xs, None)[0]
        naive_calls, naive_nfe = model.calls - calls0, model.nfe - nfe0
        assert naive_nfe == out.naive_nfe, (naive_nfe, out.naive_nfe)
        res[name] = {
            "nfe": out.nfe,
            "naive_nfe": naive_nfe,
            "ratio": out.nfe / naive_nfe,
            "max_abs_diff_vs_exact": float((out.rewards - naive).abs().max()),
            "reward_spread": float(naive.std()),
            "model_calls": calls,
            "naive_model_calls": naive_calls,
            "scored": out.scored,
        }
    return res


def throughput(quick: bool, batch: int = 4, repeats: int = 2) -> dict:
    from flowalign.rewards import tiny

    out = {}
    images = torch.rand(batch, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    prompts = (PROMPTS * batch)[:batch]
    for name in ["hpsv2", "imagereward", "pickscore", "clip", "aesthetic", "artifact"]:
        r = tiny.build(name, seed=0, full=not quick)
        with torch.no_grad():
            r(images, prompts)  # warm-up
            t0 = time.perf_counter()
            for _ in range(repeats):
                r(images, prompts)
        out[name] = batch * repeats / (time.perf_counter() - t0)
        del r
    return out


def real_rewards(quick: bool) -> dict:
    """OCR on rendered text, a served reward vs in-process, a VLM judge's consistency (real_rewards.py)."""
    import real_rewards as rr

    t0, out = time.perf_counter(), {}
    for name, part in (("ocr", lambda: rr.ocr(quick)), ("served", lambda: rr.served(quick)), ("judge", rr.judge)):
        t = time.perf_counter()
        out.update(part())
        out[f"{name}_seconds"] = round(time.perf_counter() - t, 1)
    out["issue27_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def hpsv3_reference() -> dict:
    """HPSv3 vs the ``hpsv3`` package's own code in its pinned, cached venv (scripts/hpsv3_reference);
    null with the reason printed when that venv cannot be built (e.g. offline on a fresh machine)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hpsv3_compare", ROOT / "scripts" / "hpsv3_reference" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    try:
        with tempfile.TemporaryDirectory() as d:
            r = compare.compare(d)
    except Exception as e:  # no registry / no venv: report, don't fail the benchmark
        print(f"hpsv3 reference skipped: {type(e).__name__}: {str(e)[-400:]}")
        return {"hpsv3_vs_reference_max_abs_diff": None}
    return {"hpsv3_vs_reference_max_abs_diff": r["hpsv3_vs_reference_max_abs_diff"], "hpsv3_venv_s": r["venv_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="reduced configs; finishes in about a minute")
    args = p.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    eq = equivalence(args.quick)
    lad = ladder_scenarios()
    ips = throughput(args.quick)
    real = real_rewards(args.quick)
    real.update(hpsv3_reference())
    cfg = "tiny" if args.quick else "full"
    print(
        f"equivalence ({cfg} configs): max |ours - reference|  HPSv2 {eq['hpsv2']:.2e}   "
        f"ImageReward {eq['imagereward']:.2e}"
    )
    print("\nreward ladder, group of 8 x 10 steps (analytic flow); naive = every state completed separately")
    print(
        "(max|r - exact|: error against exact all-remaining-step completions, reward std "
        f"{next(iter(lad.values()))['reward_spread']:.2f}; calls: batched model invocations)"
    )
    print(
        f"{'setting':28s} {'NFE':>5s} {'naive':>6s} {'ratio':>6s} {'max|r - exact|':>15s} {'calls':>6s} "
        f"{'naive calls':>12s}"
    )
    for name, r in lad.items():
        print(
            f"{name:28s} {r['nfe']:5d} {r['naive_nfe']:6d} {r['ratio']:6.3f} {r['max_abs_diff_vs_exact']:15.2e} "
            f"{r['model_calls']:6d} {r['naive_model_calls']:12d}"
        )
    print(f"\nimages/s ({cfg} towers, random weights, batch 4 @ 256px, no grad, {torch.get_num_threads()} threads)")
    for name, v in ips.items():
        print(f"  {name:12s} {v:8.2f}")
    print("\nissue 27 rewards (OCR, served, judge):", json.dumps(real))
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
    print(
        json.dumps(
            {
                "hpsv2_vs_reference_max_abs_diff": eq["hpsv2"],
                "imagereward_vs_reference_max_abs_diff": eq["imagereward"],
                "equivalence_config": cfg,
                "ladder_nfe_vs_naive": lad["fast_window_exact"]["ratio"],
                "ladder_headline_setting": "fast_window_exact: SDE window of 4 of 10 steps, all remaining steps, "
                "x0_preds kept",
                "ladder": {
                    k: {kk: round(vv, 6) if isinstance(vv, float) else vv for kk, vv in v.items()}
                    for k, v in lad.items()
                },
                "images_per_s": {k: round(v, 3) for k, v in ips.items()},
                "scorer_config": cfg,
                **real,
            }
        )
    )


if __name__ == "__main__":
    main()
