"""Reward vs NFE for inference-time steering on the shapes-world testbed: best-of-N, FK (each
potential), beam and DTS*, plus exactness on an analytic mixture.

    python benchmarks/bench_steering.py --seeds 3 --plot assets/figures/steering.png   # full curves
    python benchmarks/bench_steering.py --quick                                          # <= 60 s smoke

Model: the testbed pipeline (``assets/testbed/pipeline`` or $FLOWALIGN_TESTBED_DIR/pipeline); reward:
``compositional`` (fraction of the prompt's clauses the checker finds satisfied) on the held-out
prompts (``testbed.world.eval_prompts``; with ``--hardest N`` the N of all 219 the base fails most,
where best-of-N saturates later). A method's point is the mean reward of the one sample it
returns per prompt, averaged over prompts and seeds, at its NFE per prompt (model evaluations, CFG
counted once, look-ahead evaluations included).

Best-of-N uses the pipeline's ODE sampler. Its curve is the unbiased estimate of E[max of N] from a
pool of M = ``--bon-max`` x seeds candidates per prompt (sorted rewards r_(1) <= ... <= r_(M):
E[best of N] = sum_i r_(i) C(i-1, N-1) / C(M, N), the "pass@k" estimator), which has the same mean
as drawing N fresh samples and a lower variance than one nested run. FK / beam / DTS* use the
flow_sde sampler (noise level ``--noise`` / ``--dts-noise`` on the steps ``--noise-steps`` /
``--dts-noise-steps``, ODE steps elsewhere); the FK resampling steps, beam selection steps and DTS*
branching steps are ``--fk-steps`` / ``--dts-steps`` (0-based step indices). The headline potential
runs ``--seeds`` seeds at each K of ``--ks``, DTS* at each budget of ``--dts-ks`` (default ``--ks``) x T;
the side curves (other potentials, beam, more K) run ``--side-seeds`` seeds, which keeps the full run
near 25 min on 2 shared cores. Flags that cannot work together (a window outside the grid, a DTS*
branch depth with only ODE steps below it) are one argparse error before anything loads.

Defaults (tuned on the shipped testbed, see the README): FK resamples after steps 7..14 of 20
(sigma 0.78 -> 0.38), the window where the state starts to fix the compositional outcome and the
x0_pred reward tracks it (earlier resampling only copies noise, later only copies decided images);
headline potential rt (the current look-ahead reward; max keeps the credit of a look-ahead that
later went wrong and did worse at K = 8), lam = 10, x0_pred look-ahead (free: its velocity is
reused); FK and beam sample with noise only on steps 6..15 (around the resampling window: copies need
noise after they are made, while the 0.7-noise SDE elsewhere only lowers the base's reward, 0.906 ODE
-> 0.880 SDE at K = 1); DTS* branches after steps 4, 8, 12, 16 (noise on every step) with C = 1,
alpha = 0.5, c_uct = 0.1, one rollout per tree and round. On the graded aesthetic proxy
(``--reward testbed_aesthetic``) the image improves step by step and FK does best resampling after
every step with noise on every step (``--noise 1.2 --noise-steps all --fk-steps 1-18``, README): these are the
defaults of ``--reward testbed_aesthetic`` (``REWARD_DEFAULTS``; ``--quick`` keeps its own steps).

Summary numbers (last line, JSON):
* ``fk_bon_equivalent_n_over_k``: the N (interpolated linearly between integers) at which
  best-of-N's mean reward reaches FK's with K particles, divided by K; headline for potential
  ``--headline-potential`` at K = ``--headline-k``, every (potential, K) in ``fk_equivalent``;
  ``fk_bon_equivalent_nfe_ratio`` is the same N x T divided by FK's NFE (differs from N / K when the
  look-ahead costs evaluations). ``null`` + ``*_censored`` when best-of-N never reaches it within M.
* ``dts_star_nfe_ratio_vs_bon``: NFE best-of-N needs to match DTS*'s reward, divided by DTS*'s NFE
  (headline at the budget headline_k x T if ``--dts-ks`` lists it, else at the largest; every budget in
  ``dts_star_ratios``). Measuring a ratio R at budget B x T needs a pool M >= R x B.
* ``*_ci90``: 5th / 95th percentiles of the headline ratios over 2000 bootstrap resamples of the
  prompts (an upper end of null = censored in more than 5% of resamples).
* ``fmtt_`` / ``fmtt_weights_`` / ``das_`` / ``noise_search_bon_equivalent_n_over_k`` (and ``_nfe_ratio``):
  the same for FMTT (search mode; weights mode), DAS and noise search at ``--headline-k``
  (``steering_extra.py``).
* ``analytic_tilted_mean_abs_err``: max |mean error| of FK (diff potential, 2 x 1500 particles, 100
  steps) against the exact tilted 2-D Gaussian mixture (its 5-sigma bound beside it);
  ``dts_analytic_mean_abs_err`` the same for the DTS read-out (1-D, 200 trees).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from steering_extra import STYLES, add_extra_arguments, run_extra  # noqa: E402  (FMTT, DAS, noise search)

from flowalign.cli import bounded  # noqa: E402
from flowalign.sampling.schedule import parse_steps, steps_noise_table  # noqa: E402
from flowalign.steering import POTENTIALS, beam_search, best_of_n, fk_steer, tree_search  # noqa: E402
from flowalign.steering.common import expected_best_of_n  # noqa: E402
from flowalign.steering.dts import branch_depths  # noqa: E402


def redness(images, prompts):  # smoke-mode proxy reward for models without the testbed checker
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def load(args):
    from flowalign.models import load_model
    from flowalign.rewards import load_reward

    if args.model is None:
        from flowalign.testbed.paths import pipeline_dir

        args.model = str(pipeline_dir())
    model = load_model(args.model, max_sequence_length=args.max_seq)
    if args.device:
        model.to(args.device)
    if args.reward == "redness":
        return model, redness, [f"prompt {i}" for i in range(args.prompts)]
    from flowalign.testbed.world import eval_prompts

    reward = load_reward(args.reward, device=args.device or None)
    if not args.hardest:
        return model, reward, eval_prompts(args.prompts)
    return model, reward, hardest_prompts(model, reward, eval_prompts(), args)


def hardest_prompts(model, reward, prompts: list[str], args) -> list[str]:
    """The ``--hardest`` held-out prompts with the lowest mean reward over 4 ODE samples each, drawn
    on selection seed 2000 (the evaluation uses seeds 1000+, so selection and evaluation noise differ)."""
    res = best_of_n(
        model=model,
        prompts=prompts,
        reward=reward,
        n=4,
        num_steps=args.steps,
        cfg=args.cfg,
        generator=torch.Generator().manual_seed(2000),
    )
    order = res.candidate_rewards.float().mean(1).argsort()
    return [prompts[i] for i in order[: args.hardest].tolist()]


def steps_arg(text: str) -> list[int] | None:
    """'4-14' -> [4, ..., 14]; '4,8,12' -> [4, 8, 12]; 'default' -> None (the FK schedule)."""
    return None if text == "default" else parse_steps(text, "steps")


def ks_arg(text: str) -> list[int]:
    """argparse type of the K lists: comma-separated ints >= 1 ('' = none)."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not all(t.isdigit() and int(t) >= 1 for t in items):
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated ints >= 1, e.g. '2,4,8' ('' = none)")
    return [int(t) for t in items]


def potentials_arg(text: str) -> list[str]:
    """argparse type of --fk-potentials: 'all' or comma-separated names of POTENTIALS."""
    names = sorted(POTENTIALS) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    if not names or any(n not in POTENTIALS for n in names):
        raise argparse.ArgumentTypeError(f"{text!r}: choose 'all' or names among {sorted(POTENTIALS)}")
    return names


def widen_arg(text: str) -> tuple[float, float]:
    """argparse type of --dts-widen: 'C,alpha' with C > 0 and 0 < alpha <= 1."""
    try:
        c, alpha = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} must be two numbers C,alpha, e.g. '1.0,0.5'") from None
    if not (0 < c < math.inf and 0 < alpha <= 1):
        raise argparse.ArgumentTypeError(f"{text!r} needs C > 0 and 0 < alpha <= 1")
    return c, alpha


def window_arg(text: str) -> str:
    """argparse type of --noise-steps: 'all' or steps such as '6-15' (``sampling.schedule.parse_steps``)."""
    try:
        parse_steps(text, "noise steps")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


# the FK sampler defaults per reward (module doc); a flag given on the command line wins
REWARD_DEFAULTS = {
    "default": dict(noise=0.7, noise_steps="6-15", fk_steps="7-14"),
    "testbed_aesthetic": dict(noise=1.2, noise_steps="all", fk_steps="1-18"),
}


# --- best-of-N curve and equivalences -------------------------------------------------------------
def equivalent_n(curve: list[float], target: float) -> float | None:
    """Smallest real N with best-of-N mean >= target (linear between integers); None if never."""
    if target <= curve[0]:
        return 1.0
    for n in range(1, len(curve)):
        lo, hi = curve[n - 1], curve[n]
        if hi >= target:
            return n + (target - lo) / (hi - lo) if hi > lo else float(n + 1)
    return None


def bootstrap_ci(per_prompt_curve: torch.Tensor, per_prompt: torch.Tensor, scale: float, draws: int = 2000):
    """90% interval of equivalent_n(...) * scale over resamples of the prompts; None = censored."""
    g = torch.Generator().manual_seed(0)
    p = per_prompt.shape[0]
    vals = []
    for _ in range(draws):
        idx = torch.randint(p, (p,), generator=g)
        n = equivalent_n(per_prompt_curve[idx].mean(0).tolist(), float(per_prompt[idx].mean()))
        vals.append(math.inf if n is None else n * scale)
    vals.sort()
    lo, hi = vals[int(0.05 * draws)], vals[int(0.95 * draws) - 1]
    return [None if math.isinf(lo) else round(lo, 3), None if math.isinf(hi) else round(hi, 3)]


# --- analytic exactness ---------------------------------------------------------------------------
def analytic_errors() -> dict[str, float]:
    from flowalign.models.analytic import GaussianMixtureFlow
    from flowalign.steering.resample import ess, normalize

    mix = GaussianMixtureFlow(
        means=[[-2.0, 0.5], [1.5, -1.0], [0.5, 2.0]], stds=[[0.5, 0.3], [0.4, 0.6], [0.3, 0.3]], weights=[0.3, 0.5, 0.2]
    )
    c, lam = torch.tensor([1.0, 0.5]), 1.0
    res = fk_steer(
        mix,
        ["p"] * 2,
        lambda x: x @ c,
        num_particles=1500,
        lam=lam,
        potential="diff",
        num_steps=100,
        generator=torch.Generator().manual_seed(0),
    )
    w = (normalize(res.log_weights) / 2).reshape(-1, 1)
    mean = (w * res.candidates.reshape(-1, 2).double()).sum(0)
    target = mix.tilt_linear(c, lam)
    n_eff = float(ess(res.log_weights).sum())
    bound = float((5 * (target.cov().diagonal() / n_eff).sqrt()).max())
    one = GaussianMixtureFlow(means=[[-1.0], [1.0]], stds=[[0.5], [0.5]])
    dts = tree_search(
        one,
        ["p"] * 200,
        lambda x: x[:, 0],
        star=False,
        lam=0.5,
        nfe_budget=32 * 50,
        num_steps=50,
        batch=8,
        generator=torch.Generator().manual_seed(0),
    )
    m1 = torch.stack(
        [(p * x.double()[:, 0]).sum() for p, x in zip(dts.info["readout_probs"], dts.info["leaf_latents"])]
    )
    return {
        "analytic_tilted_mean_abs_err": float((mean - target.mean()).abs().max()),
        "analytic_5sigma_bound": bound,
        "dts_analytic_mean_abs_err": abs(float(m1.mean()) - float(one.tilt_linear(torch.tensor([1.0]), 0.5).mean())),
        "dts_analytic_5sigma_bound": 5 * float(m1.std()) / math.sqrt(200),
    }


# --- one method over seeds ------------------------------------------------------------------------
def run_method(name: str, family: str, fn, seeds: int, log=print, **kw) -> dict:
    per_prompt, nfe, secs = [], [], 0.0
    for seed in range(seeds):
        t0 = time.perf_counter()
        res = fn(generator=torch.Generator().manual_seed(1000 + seed), **kw)
        secs += time.perf_counter() - t0
        per_prompt.append(res.rewards.float())
        nfe.append(res.nfe / res.rewards.numel())
    pp = torch.stack(per_prompt)  # [seeds, P]
    seed_means = pp.mean(1)
    out = {
        "method": name,
        "family": family,
        "reward": float(pp.mean()),
        "reward_sd": float(seed_means.std()) if seeds > 1 else 0.0,
        "nfe": sum(nfe) / seeds,
        "seconds": secs / seeds,
        "per_prompt": pp.mean(0),
    }
    log(f"  {name:<20} reward {out['reward']:.4f} nfe {out['nfe']:.0f} ({secs:.0f} s)")
    return out


def plot(path: str, bon_nfe: list[float], bon: list[float], rows: list[dict], title: str, reward: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(bon_nfe, bon, "k-", lw=2, label="best-of-N (ODE)")
    styles = {
        "fk_max": "C0o-",
        "fk_diff": "C1s-",
        "fk_sum": "C2^-",
        "fk_rt": "C3v-",
        "beam": "C4D--",
        "dts_star": "C5*-",
        **STYLES,
    }
    for fam, style in styles.items():
        pts = sorted((r["nfe"], r["reward"]) for r in rows if r["family"] == fam)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=fam.replace("_", " "), ms=6)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("NFE per prompt (model evaluations)")
    ax.set_ylabel(f"{reward} reward (mean over prompts, seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--seeds", type=bounded(int, "[1, inf)"), default=3)
    ap.add_argument("--quick", action="store_true", help="small smoke version (<= 60 s)")
    ap.add_argument("--model", default=None, help="pipeline dir (default: the testbed assets' pipeline)")
    ap.add_argument("--reward", default="compositional", help="a name in flowalign.rewards.REWARDS, or redness")
    ap.add_argument("--device", default="")
    ap.add_argument("--prompts", type=bounded(int, "[1, inf)"), default=32)
    ap.add_argument(
        "--hardest",
        type=bounded(int, "[0, inf)"),
        default=0,
        help="instead of the first --prompts, the N held-out prompts the base fails most (see hardest_prompts)",
    )
    ap.add_argument("--steps", type=bounded(int, "[2, inf)"), default=20)
    ap.add_argument("--cfg", type=bounded(float, "[0, inf)"), default=4.5)
    ap.add_argument(
        "--noise",
        type=bounded(float, "[0, inf)"),
        default=None,
        help="flow_sde noise level of FK / beam / DTS* / FMTT / DAS (default: 0.7; testbed_aesthetic: 1.2)",
    )
    ap.add_argument(
        "--noise-steps",
        default=None,
        type=window_arg,
        help="FK / beam / FMTT / DAS: the SDE window, steps LO-HI (0-based) that get --noise, ODE elsewhere "
        "('all' = every step but the last; default: 6-15; testbed_aesthetic: all)",
    )
    ap.add_argument(
        "--dts-noise",
        type=bounded(float, "[0, inf)"),
        default=None,
        help="flow_sde noise level of DTS* (default: --noise)",
    )
    ap.add_argument("--dts-noise-steps", default="all", type=window_arg, help="the same for DTS*")
    ap.add_argument("--lam", type=bounded(float, "[0, inf)"), default=10.0)
    ap.add_argument(
        "--bon-max",
        type=bounded(int, "[1, inf)"),
        default=12,
        help="best-of-N candidates per prompt and seed (pool M = this x seeds)",
    )
    ap.add_argument(
        "--ks",
        default=[2, 4, 8],
        type=ks_arg,
        help="K values (FK particles, DTS* budgets in rollouts x T) run with --seeds",
    )
    ap.add_argument(
        "--dts-ks",
        default=None,
        type=ks_arg,
        help="DTS* budgets in rollouts x T (default: --ks; headline: --headline-k if listed, else the largest)",
    )
    ap.add_argument(
        "--side-seeds",
        type=bounded(int, "[1, inf)"),
        default=1,
        help="seeds of the side curves: other potentials, beam, --extra-fk-ks (keeps the run short)",
    )
    add_method_arguments(ap)


def add_method_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--extra-fk-ks", default=[], type=ks_arg, help="more K values for the headline potential, run with --side-seeds"
    )
    ap.add_argument(
        "--fk-potentials",
        default=sorted(POTENTIALS),
        type=potentials_arg,
        help="comma-separated FK potentials or 'all'",
    )
    ap.add_argument(
        "--other-potential-ks", default=[2, 4], type=ks_arg, help="K values of the non-headline potentials ('' = none)"
    )
    ap.add_argument("--beam-ks", default=[2, 4], type=ks_arg, help="beam particles (2 beams x K/2 children; '' = none)")
    ap.add_argument(
        "--fk-steps",
        default=None,
        help="FK resampling / beam selection / FMTT steps ('default' = FK's 20/40/60/80%%; default: 7-14; "
        "testbed_aesthetic: 1-18)",
    )
    ap.add_argument("--fk-lookahead", default="x0", choices=["x0", "x0_prev", "ode"])
    ap.add_argument("--fk-lookahead-steps", type=bounded(int, "[1, inf)"), default=None)
    ap.add_argument("--headline-k", type=bounded(int, "[1, inf)"), default=4)
    ap.add_argument("--headline-potential", default="rt", choices=sorted(POTENTIALS))
    ap.add_argument("--dts-steps", default="default", help="DTS* branching steps")
    ap.add_argument("--dts-widen", default=(1.0, 0.5), type=widen_arg, help="DTS* progressive widening C,alpha")
    ap.add_argument("--dts-cuct", type=bounded(float, "[0, inf)"), default=0.1)
    ap.add_argument("--dts-batch", type=bounded(int, "[1, inf)"), default=1, help="DTS* rollouts per tree and round")
    ap.add_argument(
        "--max-seq",
        type=bounded(int, "[1, 512]"),
        default=16,
        help="T5 max_sequence_length: the testbed's T5 stream is padding only beyond 12 tokens and was "
        "trained with 16..512 pads, so 16 gives the same images ~5x faster than the default 256",
    )
    ap.add_argument("--plot", default=None, help="save reward-vs-NFE curves (PNG) here")
    ap.add_argument("--no-analytic", action="store_true")
    add_extra_arguments(ap)


@dataclass
class Bench:  # the parsed and checked flags, and what every method run shares
    args: argparse.Namespace
    fk_steps: list[int] | None
    dts_steps: list[int] | None
    sde: dict  # step / noise table of FK and beam
    dts_sde: dict  # the same for DTS*
    dts_noise: float
    base: dict = field(default_factory=dict)  # model, prompts, reward, num_steps, cfg
    log: Callable = print

    @property
    def t(self) -> int:
        return self.args.steps


def parse(argv: list[str] | None = None) -> Bench:
    """The flags (``--quick`` shrinks them); flags that cannot work together are one argparse error."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(ap)
    args = ap.parse_args(argv)
    for name, value in REWARD_DEFAULTS.get(args.reward, REWARD_DEFAULTS["default"]).items():
        if getattr(args, name) is None:  # the sampler defaults tuned for the reward (module doc)
            setattr(args, name, value)
    if args.quick:
        args.seeds, args.side_seeds, args.prompts, args.steps, args.bon_max = 1, 1, min(args.prompts, 4), 10, 16
        args.ks, args.extra_fk_ks, args.other_potential_ks, args.beam_ks = [4], [], [4], [4]
        args.fk_steps, args.dts_steps, args.noise_steps = "3-7", "default", "2-8"
    dts_noise = args.noise if args.dts_noise is None else args.dts_noise
    try:  # a bad step list, a window outside the grid, DTS* branches with only ODE below: one error before loading
        fk_steps, dts_steps = steps_arg(args.fk_steps), steps_arg(args.dts_steps)
        sde, dts_sde = (
            dict(step="flow_sde", noise_level=steps_noise_table(args.steps, lvl, w))
            for lvl, w in ((args.noise, args.noise_steps), (dts_noise, args.dts_noise_steps))
        )
        branch_depths(dts_steps, dts_sde["noise_level"], args.steps, "--dts-steps")
    except ValueError as err:
        ap.error(f"--fk-steps / --dts-steps / --noise-steps / --dts-noise-steps with --steps {args.steps}: {err}")
    check_inputs(ap, args)
    return Bench(args, fk_steps, dts_steps, sde, dts_sde, dts_noise)


def check_inputs(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What would otherwise fail after minutes of sampling: one argparse error before anything loads."""
    from flowalign.rewards import REWARDS

    if not args.ks:
        ap.error("--ks '' leaves no K for the headline FK curve; pass e.g. --ks 2,4,8")
    if args.reward not in (*REWARDS, "redness"):
        ap.error(f"--reward {args.reward!r} is unknown; choose one of {sorted([*REWARDS, 'redness'])}")
    if args.model is not None and not os.path.isfile(os.path.join(args.model, "model_index.json")):
        ap.error(f"--model {args.model!r} holds no saved pipeline (model_index.json)")
    if args.plot is not None:
        near = next(p for p in Path(os.path.abspath(args.plot)).parents if p.exists())
        if (
            os.path.isdir(args.plot)
            or not near.is_dir()
            or Path(args.plot).suffix.lower() not in (".png", ".pdf", ".svg")
        ):
            ap.error(
                f"--plot {args.plot!r} must be a .png / .pdf / .svg file that can be written (it is saved at the end)"
            )


def bon_pool(b: Bench) -> tuple[torch.Tensor, list[float], list[dict]]:
    """best-of-N: one pool of bon_max x seeds ODE candidates per prompt -> (E[best of N] per prompt [P, M],
    its mean curve, the rows of N = 1, 2, 4, ...)."""
    pools, bon_secs = [], 0.0
    for seed in range(b.args.seeds):
        t0 = time.perf_counter()
        res = best_of_n(n=b.args.bon_max, generator=torch.Generator().manual_seed(1000 + seed), **b.base)
        bon_secs += time.perf_counter() - t0
        pools.append(res.candidate_rewards.float())
    pool = torch.cat(pools, 1)  # [P, M]
    per_prompt_curve = expected_best_of_n(pool)  # [P, M]
    bon = per_prompt_curve.mean(0).tolist()
    m = len(bon)
    b.log(
        f"  best-of-N pool M={m} ({bon_secs:.0f} s): "
        + " ".join(f"N={n}:{bon[n - 1]:.4f}" for n in (1, 2, 4, 8, 16, 32, 64, 128) if n <= m)
    )
    sec_per_sample = bon_secs / (b.args.bon_max * b.args.seeds)
    rows = [
        {"method": f"bon N={n}", "family": "bon", "reward": bon[n - 1], "nfe": n * b.t, "seconds": n * sec_per_sample}
        for n in (1, 2, 4, 8, 16, 32, 64, 128)
        if n <= m
    ]
    return per_prompt_curve, bon, rows


def run_fk(b: Bench, bon: list[float], ks: list[int]) -> tuple[dict, dict, dict]:
    """FK at every (potential, K) of the plan -> (results, N/K equivalents, NFE-ratio equivalents)."""
    a = b.args
    pots, hp = a.fk_potentials, a.headline_potential
    plan = [(hp, k, a.seeds) for k in ks] + [(hp, k, a.side_seeds) for k in a.extra_fk_ks if k not in ks]
    plan += [(pot, k, a.side_seeds) for pot in pots if pot != hp for k in a.other_potential_ks]
    results, fk_eq, fk_eq_nfe = {}, {}, {}
    for pot, k, seeds in sorted(plan, key=lambda x: (x[1], x[0])):
        r = run_method(
            f"fk_{pot} K={k}",
            f"fk_{pot}",
            fk_steer,
            seeds,
            b.log,
            num_particles=k,
            lam=a.lam,
            potential=pot,
            resample_steps=b.fk_steps,
            lookahead=a.fk_lookahead,
            lookahead_steps=a.fk_lookahead_steps,
            **b.sde,
            **b.base,
        )
        n_eq = equivalent_n(bon, r["reward"])
        r["bon_equivalent_n_over_k"] = None if n_eq is None else n_eq / k
        r["bon_equivalent_nfe_ratio"] = None if n_eq is None else n_eq * b.t / r["nfe"]
        fk_eq[f"{pot}_K{k}"] = r["bon_equivalent_n_over_k"]
        fk_eq_nfe[f"{pot}_K{k}"] = r["bon_equivalent_nfe_ratio"]
        results[(pot, k)] = r
    return results, fk_eq, fk_eq_nfe


def run_beam(b: Bench) -> list[dict]:
    return [
        run_method(
            f"beam K={k}",
            "beam",
            beam_search,
            b.args.side_seeds,
            b.log,
            beam_width=min(2, k),
            num_children=max(1, k // 2),
            select_steps=b.fk_steps,
            **b.sde,
            **b.base,
        )
        for k in b.args.beam_ks
    ]


def run_dts(b: Bench, bon: list[float], dts_ks: list[int]) -> dict:
    """DTS* at every budget K x T -> results keyed ("dts_star", K)."""
    c_pw, alpha = b.args.dts_widen
    results = {}
    for k in dts_ks:
        r = run_method(
            f"dts_star {k}T",
            "dts_star",
            tree_search,
            b.args.seeds,
            b.log,
            star=True,
            nfe_budget=k * b.t,
            lam=b.args.lam,
            branch_steps=b.dts_steps,
            widen_c=c_pw,
            widen_alpha=alpha,
            c_uct=b.args.dts_cuct,
            batch=b.args.dts_batch,
            **b.dts_sde,
            **b.base,
        )
        n_eq = equivalent_n(bon, r["reward"])
        r["bon_nfe_ratio"] = None if n_eq is None else n_eq * b.t / r["nfe"]
        results[("dts_star", k)] = r
    return results


def print_table(rows: list[dict], m: int, t: int) -> None:
    print(
        f"{'method':<22}{'NFE/prompt':>11}{'reward':>9}{'sd(seeds)':>11}{'s/run':>8}  BoN-equivalent (N/K | NFE ratio)"
    )
    for r in rows:
        if "bon_equivalent_n_over_k" in r:
            a, b = r["bon_equivalent_n_over_k"], r["bon_equivalent_nfe_ratio"]
            extra = f"> M/K={m / int(r['method'].split('=')[1]):.2f}" if a is None else f"{a:.2f} | {b:.2f}"
        elif "bon_nfe_ratio" in r:
            extra = f"> {m * t / r['nfe']:.2f}" if r["bon_nfe_ratio"] is None else f"     | {r['bon_nfe_ratio']:.2f}"
        else:
            extra = ""
        print(
            f"{r['method']:<22}{r['nfe']:>11.0f}{r['reward']:>9.4f}{r.get('reward_sd', 0.0):>11.4f}"
            f"{r['seconds']:>8.2f}  {extra}"
        )


def headline(
    b: Bench, results: dict, per_prompt_curve: torch.Tensor, ks: list[int], dts_ks: list[int]
) -> tuple[dict, dict]:
    """The headline ratios (FK at --headline-k, DTS* at that budget or the largest) with their intervals."""
    hk = b.args.headline_k if b.args.headline_k in ks else ks[0]
    fk_r = results[(b.args.headline_potential, hk)]
    fk_head = fk_r["bon_equivalent_n_over_k"]
    fk = {
        "fk_bon_equivalent_n_over_k": fk_head,
        "fk_headline": f"{b.args.headline_potential} K={hk}",
        "fk_censored": fk_head is None,
        "fk_bon_equivalent_nfe_ratio": fk_r["bon_equivalent_nfe_ratio"],
        "fk_bon_equivalent_n_over_k_ci90": bootstrap_ci(per_prompt_curve, fk_r["per_prompt"], 1.0 / hk),
    }
    if not dts_ks:  # --dts-ks '': no DTS* run
        return fk, {"dts_star_nfe_ratio_vs_bon": None, "dts_star_headline": None, "dts_star_ratios": {}}
    dts_hk = hk if hk in dts_ks else max(dts_ks)
    dts_r = results[("dts_star", dts_hk)]
    dts_head = dts_r["bon_nfe_ratio"]
    return fk, {
        "dts_star_nfe_ratio_vs_bon": dts_head,
        "dts_star_headline": f"{dts_hk}T",
        "dts_star_censored": dts_head is None,
        "dts_star_nfe_ratio_ci90": bootstrap_ci(per_prompt_curve, dts_r["per_prompt"], b.t / dts_r["nfe"]),
        "dts_star_ratios": {f"{k}T": results[("dts_star", k)]["bon_nfe_ratio"] for k in dts_ks},
    }


def settings(b: Bench, n_prompts: int, m: int) -> dict:
    """The run's settings, as they end the summary line."""
    a = b.args
    return {
        "model": a.model,
        "reward": a.reward,
        "prompts": n_prompts,
        "hardest": a.hardest,
        "seeds": a.seeds,
        "side_seeds": a.side_seeds,
        "steps": b.t,
        "bon_pool": m,
        "lam": a.lam,
        "noise_level": a.noise,
        "dts_noise_level": b.dts_noise,
        "noise_steps": a.noise_steps,
        "dts_noise_steps": a.dts_noise_steps,
        "fk_steps": b.fk_steps,
        "fk_lookahead": a.fk_lookahead,
        "dts_steps": b.dts_steps,
        "dts_widen": list(a.dts_widen),
        "dts_c_uct": a.dts_cuct,
        "dts_batch": a.dts_batch,
        "max_sequence_length": a.max_seq,
    }


def main(argv: list[str] | None = None) -> None:
    b = parse(argv)
    a, t = b.args, b.t
    threads = os.environ.get("OMP_NUM_THREADS", "")  # OMP_NUM_THREADS=1: one core (timings per core)
    torch.set_num_threads(int(threads) if threads.isdigit() and int(threads) > 0 else min(2, os.cpu_count() or 1))
    t_start = time.perf_counter()
    model, reward, prompts = load(a)
    b.base = dict(model=model, prompts=prompts, reward=reward, num_steps=t, cfg=a.cfg)
    b.log = lambda *x: print(*x, file=sys.stderr, flush=True)  # progress on stderr
    ks = a.ks
    dts_ks = ks if a.dts_ks is None else a.dts_ks  # [] (--dts-ks ''): no DTS*
    per_prompt_curve, bon, rows = bon_pool(b)
    m = len(bon)
    results, fk_eq, fk_eq_nfe = run_fk(b, bon, ks)
    rows += [results[key] for key in results]
    rows += run_beam(b)
    results |= run_dts(b, bon, dts_ks)
    rows += [results[("dts_star", k)] for k in dts_ks]
    extra_rows, extra = run_extra(b, bon, ks, run_method, equivalent_n)
    rows += extra_rows
    print_table(rows, m, t)
    fk_head, dts_head = headline(b, results, per_prompt_curve, ks, dts_ks)
    analytic = {} if a.no_analytic else analytic_errors()
    summary = {
        **fk_head,
        "fk_equivalent": fk_eq,
        "fk_equivalent_nfe_ratio": fk_eq_nfe,
        **dts_head,
        **extra,
        **analytic,
        "rewards": {r["method"]: round(r["reward"], 4) for r in rows},
        "bon_curve": {str(n): round(bon[n - 1], 4) for n in range(1, m + 1)},
        **settings(b, len(prompts), m),
        "seconds": round(time.perf_counter() - t_start, 1),
        "quick": a.quick,
    }
    if a.plot:
        title = (
            f"{os.path.basename(os.path.dirname(a.model.rstrip('/')))}: {len(prompts)} "
            f"{'hardest ' if a.hardest else ''}prompts x {a.seeds} seeds,\n"
            f"T={t}, lam={a.lam}, noise={a.noise} (FK / beam on steps {a.noise_steps}), "
            f"DTS* {b.dts_noise} on {a.dts_noise_steps}"
        )
        plot(a.plot, [n * t for n in range(1, m + 1)], bon, rows, title, a.reward)
        summary["plot"] = a.plot
    if analytic:
        print(
            f"analytic FK mean err {analytic['analytic_tilted_mean_abs_err']:.4f} (5-sigma "
            f"{analytic['analytic_5sigma_bound']:.4f}); DTS read-out mean err "
            f"{analytic['dts_analytic_mean_abs_err']:.4f} (5-sigma {analytic['dts_analytic_5sigma_bound']:.4f})"
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
