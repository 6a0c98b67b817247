"""FMTT, DAS and noise search on bench_steering's reward-vs-NFE curves (imported by bench_steering.py).

Each method runs at every K of ``--ks`` with ``--seeds`` seeds on the bench's prompts, sampler (noise
``--noise`` on ``--noise-steps``) and lam:

* ``fmtt``: K particles, the ``--fmtt-flow-steps``-step ODE flow map as look-ahead after each step of
  ``--fk-steps``, the tilt beta = 1 - sigma; ``--fmtt-mode search`` (default) keeps the top K/2 by
  look-ahead reward, ``weights`` is the exact importance-weighted sampler (on the aesthetic proxy, 8
  prompts x 3 seeds, K = 4: search N/K 4.80, weights 0.77); its look-ahead evaluations beyond the first
  (reused) cost NFE.
* ``fmtt_weights``: the same in weights mode, a second row (``fmtt_weights_*`` keys; skipped when
  ``--fmtt-mode weights`` already makes ``fmtt`` that sampler).
* ``das``: K particles, DAS tempering, x0_pred look-ahead after every step, the reward-gradient proposal
  (``--das-grad-scale``; one autograd evaluation per stochastic step) when the reward is differentiable,
  else tempered SMC without it (``das_gradient`` false in the summary).
* ``noise_search``: the evolutionary search over the ODE's initial noise at an NFE budget of K x T per
  prompt: candidates scored by a ``--noise-verifier-steps``-step ODE completion, the best rolled out in
  full (T), population 4, elites 2, mutation ``--noise-mutation``.

``*_bon_equivalent_n_over_k``: as FK's, the N at which best-of-N's mean reward reaches the method's,
divided by K at the headline K (noise search: K = its budget / T, so N / K is also its NFE ratio);
``*_bon_equivalent_nfe_ratio``: N x T over the method's NFE per prompt; ``*_equivalent``: every K.
``<method>_censored``: true when the method beats the whole best-of-N pool (M samples) at the headline K;
then ``_bon_equivalent_n_over_k`` is null and ``_above`` keys give the lower bounds M/K and M x T / NFE.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from flowalign.steering import das_steer, fmtt_steer, noise_search

EXTRA = ("fmtt", "fmtt_weights", "das", "noise_search")
STYLES = {"fmtt": "C6P-", "fmtt_weights": "C6p:", "das": "C7X-", "noise_search": "C8h--"}


def methods_arg(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if any(n not in EXTRA for n in names):
        raise argparse.ArgumentTypeError(f"{text!r}: choose names among {list(EXTRA)} ('' = none)")
    return names


def add_extra_arguments(ap: argparse.ArgumentParser) -> None:
    from flowalign.cli import bounded

    ap.add_argument(
        "--extra-methods", default=list(EXTRA), type=methods_arg, help="fmtt,fmtt_weights,das,noise_search ('' = none)"
    )
    ap.add_argument("--fmtt-flow-steps", type=bounded(int, "[1, inf)"), default=2, help="k of FMTT's ODE flow map")
    ap.add_argument("--fmtt-mode", default="search", choices=["weights", "search"])
    ap.add_argument("--das-grad-scale", type=bounded(float, "[0, inf)"), default=1.0)
    ap.add_argument("--noise-verifier-steps", type=bounded(int, "[1, inf)"), default=4)
    ap.add_argument("--noise-mutation", type=bounded(float, "(0, 1]"), default=0.5)


def _plan(b, method: str, k: int, differentiable: bool) -> tuple[Callable, dict]:
    a = b.args
    if method in ("fmtt", "fmtt_weights"):
        mode = a.fmtt_mode if method == "fmtt" else "weights"
        kw = dict(num_particles=k, lam=a.lam, mode=mode, flow_map_steps=a.fmtt_flow_steps)
        return fmtt_steer, kw | dict(resample_steps=b.fk_steps, **b.sde)
    if method == "das":
        grad = a.das_grad_scale if differentiable else 0.0
        return das_steer, dict(num_particles=k, lam=a.lam, reward_grad_scale=grad, **b.sde)
    kw = dict(population=4, elites=2, mutation=a.noise_mutation, verifier_steps=a.noise_verifier_steps)
    return noise_search, kw | dict(nfe_budget=k * b.t)


def run_extra(b, bon: list[float], ks: list[int], run_method: Callable, equivalent_n: Callable) -> tuple[list, dict]:
    """Every (method, K) -> (rows for the table / plot, summary keys)."""
    hk = b.args.headline_k if b.args.headline_k in ks else ks[0]
    differentiable = getattr(b.base["reward"], "differentiable", None) is not False
    rows, summary = [], {}
    methods = [m for m in b.args.extra_methods if not (m == "fmtt_weights" and b.args.fmtt_mode == "weights")]
    for method in methods:
        eq, eq_nfe, nfes = {}, {}, {}
        for k in ks:
            fn, kw = _plan(b, method, k, differentiable)
            r = run_method(f"{method} K={k}", method, fn, b.args.seeds, b.log, **kw, **b.base)
            n_eq = equivalent_n(bon, r["reward"])
            r["bon_equivalent_n_over_k"] = None if n_eq is None else n_eq / k
            r["bon_equivalent_nfe_ratio"] = None if n_eq is None else n_eq * b.t / r["nfe"]
            eq[f"K{k}"], eq_nfe[f"K{k}"] = r["bon_equivalent_n_over_k"], r["bon_equivalent_nfe_ratio"]
            nfes[k] = r["nfe"]
            rows.append(r)
        summary[f"{method}_bon_equivalent_n_over_k"] = eq[f"K{hk}"]
        summary[f"{method}_bon_equivalent_nfe_ratio"] = eq_nfe[f"K{hk}"]
        summary[f"{method}_censored"] = eq[f"K{hk}"] is None  # above the whole best-of-N pool (M = len(bon))
        if eq[f"K{hk}"] is None:  # then N/K > M/K and the NFE ratio > M x T / its NFE: lower bounds
            summary[f"{method}_bon_equivalent_n_over_k_above"] = len(bon) / hk
            summary[f"{method}_bon_equivalent_nfe_ratio_above"] = len(bon) * b.t / nfes[hk]
        summary[f"{method}_equivalent"] = eq
    if "das" in b.args.extra_methods:
        summary["das_gradient"] = differentiable and b.args.das_grad_scale > 0
    return rows, summary
