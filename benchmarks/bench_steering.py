"""Reward vs NFE for inference-time steering on the shapes-world testbed: best-of-N, FK (each
potential), beam and DTS*, plus exactness on an analytic mixture.

    python benchmarks/bench_steering.py --seeds 3        # full curves
    python benchmarks/bench_steering.py --quick          # <= 60 s smoke version

Model: the testbed pipeline (``assets/testbed/pipeline``); reward: ``compositional`` (fraction of the
prompt's clauses the checker finds satisfied), on the held-out prompts (``testbed.world.eval_prompts``).
Each method's point is the mean reward of the sample it returns per prompt, averaged over prompts
and seeds, at its NFE per prompt (model evaluations, CFG counted once). Best-of-N uses the
pipeline's ODE sampler and one run of N_max candidates per prompt: the curve at N is the best of
the first N (nested). FK / beam / DTS* use the flow_sde sampler (noise level ``--noise``).

Summary numbers (last line, JSON):
* ``fk_bon_equivalent_n_over_k``: the N (interpolated between integers) at which best-of-N's mean
  reward reaches FK's with K particles, divided by K; headline for the FK default (potential max,
  K = ``--headline-k``), every (potential, K) in ``fk_equivalent``. ``null`` + ``censored`` when
  best-of-N never reaches it within N_max.
* ``dts_star_nfe_ratio_vs_bon``: NFE best-of-N needs to match DTS*'s reward, divided by DTS*'s NFE
  (headline at the budget headline_k x T).
* ``analytic_tilted_mean_abs_err``: max |mean error| of FK (diff potential, 2 x 1500 particles, 100
  steps) against the exact tilted 2-D Gaussian mixture, in units of the data (its 5-sigma bound is
  printed beside it); ``dts_analytic_mean_abs_err`` the same for the DTS read-out (1-D, 200 trees).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowalign.steering import POTENTIALS, beam_search, best_of_n, fk_steer, tree_search  # noqa: E402


def redness(images, prompts):  # smoke-mode proxy reward for models without the testbed checker
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def load(args):
    from flowalign.models import load_model
    from flowalign.rewards import load_reward

    model = load_model(args.model, max_sequence_length=args.max_seq)
    if args.device:
        model.to(args.device)
    if args.reward == "redness":
        return model, redness, [f"prompt {i}" for i in range(args.prompts)]
    from flowalign.testbed.world import eval_prompts

    return model, load_reward(args.reward, device=args.device or None), eval_prompts(args.prompts)


def equivalent_n(curve: list[float], target: float) -> float | None:
    """Smallest real N with best-of-N mean >= target (linear between integers); None if never."""
    if target <= curve[0]:
        return 1.0
    for n in range(1, len(curve)):
        lo, hi = curve[n - 1], curve[n]
        if hi >= target:
            return n + (target - lo) / (hi - lo) if hi > lo else float(n + 1)
    return None


def analytic_errors() -> dict[str, float]:
    from flowalign.models.analytic import GaussianMixtureFlow
    from flowalign.steering.resample import ess, normalize

    mix = GaussianMixtureFlow(means=[[-2.0, 0.5], [1.5, -1.0], [0.5, 2.0]], stds=[[0.5, 0.3], [0.4, 0.6], [0.3, 0.3]],
                              weights=[0.3, 0.5, 0.2])
    c, lam = torch.tensor([1.0, 0.5]), 1.0
    res = fk_steer(mix, ["p"] * 2, lambda x: x @ c, num_particles=1500, lam=lam, potential="diff", num_steps=100,
                   generator=torch.Generator().manual_seed(0))
    w = (normalize(res.log_weights) / 2).reshape(-1, 1)
    mean = (w * res.candidates.reshape(-1, 2).double()).sum(0)
    target = mix.tilt_linear(c, lam)
    n_eff = float(ess(res.log_weights).sum())
    bound = float((5 * (target.cov().diagonal() / n_eff).sqrt()).max())
    one = GaussianMixtureFlow(means=[[-1.0], [1.0]], stds=[[0.5], [0.5]])
    dts = tree_search(one, ["p"] * 200, lambda x: x[:, 0], star=False, lam=0.5, nfe_budget=32 * 50, num_steps=50,
                      generator=torch.Generator().manual_seed(0))
    m1 = torch.stack([(p * x.double()[:, 0]).sum() for p, x in zip(dts.info["readout_probs"], dts.info["leaf_latents"])])
    return {"analytic_tilted_mean_abs_err": float((mean - target.mean()).abs().max()), "analytic_5sigma_bound": bound,
            "dts_analytic_mean_abs_err": abs(float(m1.mean()) - float(one.tilt_linear(torch.tensor([1.0]), 0.5).mean())),
            "dts_analytic_5sigma_bound": 5 * float(m1.std()) / math.sqrt(200)}


def run_method(name, fn, seeds, **kw) -> dict:
    rewards, nfe, secs = [], [], 0.0
    for seed in range(seeds):
        t0 = time.perf_counter()
        res = fn(generator=torch.Generator().manual_seed(1000 + seed), **kw)
        secs += time.perf_counter() - t0
        rewards.append(float(res.rewards.mean()))
        nfe.append(res.nfe / res.rewards.numel())
    return {"method": name, "reward": sum(rewards) / seeds, "reward_sd": float(torch.tensor(rewards).std()) if seeds > 1 else 0.0,
            "nfe": sum(nfe) / seeds, "seconds": secs / seeds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="small smoke version (<= 60 s)")
    ap.add_argument("--model", default="assets/testbed/pipeline")
    ap.add_argument("--reward", default="compositional")
    ap.add_argument("--device", default="")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=4.5)
    ap.add_argument("--noise", type=float, default=0.7)
    ap.add_argument("--lam", type=float, default=10.0)
    ap.add_argument("--bon-max", type=int, default=64)
    ap.add_argument("--ks", default="2,4,8,16", help="FK particles / beam particles / DTS* budgets in rollouts")
    ap.add_argument("--headline-k", type=int, default=4)
    ap.add_argument("--dts-widen", default="1.0,0.5", help="DTS* progressive widening C,alpha")
    ap.add_argument("--dts-cuct", type=float, default=0.1)
    ap.add_argument("--dts-batch", type=int, default=8, help="DTS* rollouts per tree and round")
    ap.add_argument("--max-seq", type=int, default=16,
                    help="T5 max_sequence_length: the testbed's T5 stream is padding only beyond 12 tokens and was "
                         "trained with 16..512 pads, so 16 gives the same images ~5x faster than the default 256")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.prompts, args.steps, args.bon_max, args.ks = 1, min(args.prompts, 4), 10, 16, "4"
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t_start = time.perf_counter()
    model, reward, prompts = load(args)
    ks = [int(k) for k in args.ks.split(",")]
    base = dict(model=model, prompts=prompts, reward=reward, num_steps=args.steps, cfg=args.cfg)
    sde = dict(step="flow_sde", noise_level=args.noise)
    t = args.steps

    # best-of-N: nested prefixes of one run of N_max candidates per prompt
    curves, bon_secs = [], 0.0
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        res = best_of_n(n=args.bon_max, generator=torch.Generator().manual_seed(1000 + seed), **base)
        bon_secs += time.perf_counter() - t0
        cum = res.candidate_rewards.cummax(-1).values  # [P, N]: best of the first n
        curves.append(cum.mean(0))
    bon = torch.stack(curves).mean(0).tolist()  # [N_max]
    rows = [{"method": f"bon N={n}", "reward": bon[n - 1], "nfe": n * t,
             "seconds": bon_secs / args.seeds * n / args.bon_max} for n in (1, 2, 4, 8, 16, 32, 64) if n <= args.bon_max]

    fk_eq, results = {}, {}
    c_pw, alpha = (float(v) for v in args.dts_widen.split(","))
    for k in ks:
        for pot in sorted(POTENTIALS):
            r = run_method(f"fk_{pot} K={k}", fk_steer, args.seeds, num_particles=k, lam=args.lam, potential=pot,
                           **sde, **base)
            n_eq = equivalent_n(bon, r["reward"])
            r["bon_equivalent_n_over_k"] = None if n_eq is None else n_eq / k
            fk_eq[f"{pot}_K{k}"] = r["bon_equivalent_n_over_k"]
            rows.append(r)
            results[(pot, k)] = r
        rows.append(run_method(f"beam K={k}", beam_search, args.seeds, beam_width=min(2, k), num_children=max(1, k // 2),
                               **sde, **base))
        r = run_method(f"dts_star {k}T", tree_search, args.seeds, star=True, nfe_budget=k * t, lam=args.lam,
                       widen_c=c_pw, widen_alpha=alpha, c_uct=args.dts_cuct, batch=args.dts_batch, **sde, **base)
        n_eq = equivalent_n(bon, r["reward"])
        r["bon_nfe_ratio"] = None if n_eq is None else n_eq * t / r["nfe"]
        results[("dts_star", k)] = r
        rows.append(r)

    print(f"{'method':<22}{'NFE/prompt':>11}{'reward':>9}{'sd(seeds)':>11}{'s/run':>8}  BoN-equivalent")
    for r in rows:
        extra = r.get("bon_equivalent_n_over_k", r.get("bon_nfe_ratio", ""))
        extra = "" if extra == "" else ("> N_max" if extra is None else f"{extra:.2f}")
        print(f"{r['method']:<22}{r['nfe']:>11.0f}{r['reward']:>9.4f}{r.get('reward_sd', 0.0):>11.4f}"
              f"{r['seconds']:>8.2f}  {extra}")
    hk = args.headline_k if args.headline_k in ks else ks[0]
    fk_head = results[("max", hk)]["bon_equivalent_n_over_k"]
    dts_head = results[("dts_star", hk)]["bon_nfe_ratio"]
    analytic = analytic_errors()
    summary = {
        "fk_bon_equivalent_n_over_k": fk_head, "fk_headline": f"max K={hk}", "fk_censored": fk_head is None,
        "fk_equivalent": fk_eq,
        "dts_star_nfe_ratio_vs_bon": dts_head, "dts_star_headline": f"{hk}T", "dts_star_censored": dts_head is None,
        "dts_star_ratios": {f"{k}T": results[("dts_star", k)]["bon_nfe_ratio"] for k in ks},
        **analytic,
        "bon_curve": {str(n): round(bon[n - 1], 4) for n in range(1, args.bon_max + 1)},
        "model": args.model, "reward": args.reward, "prompts": len(prompts), "seeds": args.seeds, "steps": t,
        "lam": args.lam, "noise_level": args.noise, "dts_widen": [c_pw, alpha], "dts_c_uct": args.dts_cuct,
        "dts_batch": args.dts_batch, "max_sequence_length": args.max_seq,
        "seconds": round(time.perf_counter() - t_start, 1), "quick": args.quick,
    }
    print(f"analytic FK mean err {analytic['analytic_tilted_mean_abs_err']:.4f} (5-sigma {analytic['analytic_5sigma_bound']:.4f}); "
          f"DTS read-out mean err {analytic['dts_analytic_mean_abs_err']:.4f} (5-sigma {analytic['dts_analytic_5sigma_bound']:.4f})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
