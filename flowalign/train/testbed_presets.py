"""The testbed presets: ``testbed`` (Flow-GRPO-Fast on the embedded shapes-world pipeline, sized for a CPU)
and its ``testbed_<variant>`` configs, each a few overrides of ``testbed`` so that comparisons change one
thing (credit schemes, windows, objectives, rewards). Registered by name in ``presets.py``.
"""

from __future__ import annotations

from ..credit import (
    BranchGRPOOptions,
    DenseOptions,
    EuphoniumOptions,
    G2RPOOptions,
    TreeGRPOOptions,
    TurningPointOptions,
)
from ..credit.pref import PrefGRPOOptions
from ..sampling.windows import AllOptions, FixedOptions, GeometricOptions, ProgressiveOptions, RandomOptions
from .config import Config, CreditConfig, ObjectiveConfig, WindowConfig
from .objectives import NFTOptions


def testbed() -> Config:
    """The default: the compositional reward on the embedded shapes-world pipeline, sized for a CPU.
    32 images (4 prompts x 8) per iteration, 8 steps of which the first two are SDE (trained) and the
    rest ODE (Flow-GRPO-Fast with the window pinned to the start, as the flow_grpo Flux-fast recipes
    do), one initial noise per group so that rewards differ by the SDE noise only, LoRA r16 on the
    attention of the 4-layer transformer. The testbed's T5 is a bag of words, so 16 T5 positions hold
    every prompt (the pipeline's default 256 only adds identical pad tokens). Layout is settled in the
    first steps: a window drawn in [0, 4) (the previous default) leaves a third of the groups with
    identical rewards on the neglect base (README; pinned: 15%) and reached 0.635 there in 10 one-core
    minutes, the pinned window 0.779 (duplicate base: 0.630 vs 0.790). Learning rate and KL are the
    paper's GenEval values (3e-4, beta 0.04): with the pinned window lr 5e-4 collapsed the previous
    4000-step base (0.432 -> 0.139 in 15 minutes), and at lr 1e-3 held-out accuracy collapses within ~40
    iterations, with or without the KL term."""
    cfg = Config(preset="testbed")
    cfg.model.max_sequence_length = 16
    cfg.model.lora_rank, cfg.model.lora_alpha = 16, 32
    cfg.sample.num_steps, cfg.sample.guidance_scale, cfg.sample.noise_level = 8, 4.5, 0.7
    cfg.sample.group_size, cfg.sample.groups_per_iteration, cfg.sample.batch_size = 8, 4, 16
    cfg.sample.window = WindowConfig("fixed", FixedOptions(size=2, start=0))  # steps 0-1
    cfg.sample.same_noise = True
    cfg.credit.scale = "group"
    cfg.objective.options.clip_range, cfg.objective.options.beta = 5e-3, 0.04
    cfg.optim.lr, cfg.optim.steps_per_iteration = 3e-4, 2
    cfg.train.iterations, cfg.train.save_every, cfg.train.ema = 60, 10, False
    cfg.eval.every, cfg.eval.num_prompts, cfg.eval.num_steps, cfg.eval.batch_size = 10, 64, 20, 32
    cfg.eval.metrics = {"accuracy": {"reward": "compositional", "output": "strict"}}  # GenEval-style: all clauses hold
    return cfg


# --- credit / exploration variants on the testbed (issue 6; benchmarks/bench_credit.py compares them) ---
def _variant(name: str, credit=None, window=None, objective=None) -> Config:
    """The testbed preset with the random window in [0, 4) the variants were compared with (issue 6),
    and the given credit / window / objective sections."""
    cfg = testbed()
    cfg.preset = name
    cfg.sample.window = window or WindowConfig("random", RandomOptions(size=2, range=[0, 4]))
    cfg.credit = CreditConfig(kind=credit[0], scale="group", options=credit[1]) if credit else cfg.credit
    cfg.objective = objective or cfg.objective
    return cfg


def testbed_dense() -> Config:
    """DenseGRPO: per-step gains of a reward ladder (ODE completions with all remaining steps)."""
    cfg = _variant("testbed_dense", credit=("dense", DenseOptions()))
    cfg.sample.share_prefix = True
    return cfg


def testbed_dense_psi() -> Config:
    """DenseGRPO with the reward-aware noise table psi(t) calibrated before training (Alg. 1)."""
    cfg = _variant("testbed_dense_psi", credit=("dense", DenseOptions(calibrate_iterations=10, calibrate_samples=16)))
    cfg.sample.share_prefix = True
    return cfg


def testbed_turning_point() -> Config:
    """TP-GRPO: a 4-step SDE window (turning points need several steps), balanced per sampling batch."""
    window = WindowConfig("random", RandomOptions(size=4, range=[0, 8]))
    cfg = _variant("testbed_turning_point", credit=("turning_point", TurningPointOptions()), window=window)
    cfg.sample.share_prefix = True
    return cfg


def testbed_g2rpo() -> Config:
    """G^2RPO: one SDE step in the first half per iteration, completions at strides {1, 2, 3}."""
    window = WindowConfig("random", RandomOptions(size=1, range=[0, 4]))
    cfg = _variant("testbed_g2rpo", credit=("g2rpo", G2RPOOptions(strides=[1, 2, 3])), window=window)
    cfg.sample.share_prefix = True
    return cfg


def testbed_branchgrpo() -> Config:
    """BranchGRPO: SDE on every step but the last, binary splits at steps 0, 2, 4 (8 leaves = the group)."""
    tree = BranchGRPOOptions(splits=[0, 2, 4], branch=[2])
    return _variant("testbed_branchgrpo", credit=("branchgrpo", tree), window=WindowConfig("all", AllOptions()))


def testbed_treegrpo() -> Config:
    """TreeGRPO: a 3-step SDE window with a truncated-geometric start (r = 0.5), binary splits at each window step."""
    window = WindowConfig("geometric", GeometricOptions(size=3, r=0.5))
    return _variant(
        "testbed_treegrpo", credit=("treegrpo", TreeGRPOOptions(splits=[0, 1, 2], branch=[2])), window=window
    )


def testbed_euphonium() -> Config:
    """Euphonium: Dance-SDE (eta 0.25) guided by the gradient of the checker's soft clause score on
    x0_pred, dual outcome (compositional fraction) + process advantages."""
    opts = EuphoniumOptions(process_reward="compositional", process_options={"output": "soft"}, reward_grad_scale=1.0)
    cfg = _variant("testbed_euphonium", credit=("euphonium", opts))
    cfg.sample.step, cfg.sample.noise_level = "dance_sde", 0.25
    return cfg


def testbed_mixgrpo() -> Config:
    """MixGRPO: a 2-step SDE window sliding one step later every 5 iterations (wrapping around)."""
    return _variant("testbed_mixgrpo", window=WindowConfig("progressive", ProgressiveOptions(size=2, every=5)))


def testbed_artifact_reg() -> Config:
    """The hackable aesthetic proxy regularised by the artifact detector (weight 5 in the summed reward,
    as the ArtifactReward recipe sums rewards then z-scores) and a KL to the base model (beta 0.04);
    evals track the proxy, the detector and compositional accuracy (benchmarks/bench_artifact_reg.py)."""
    cfg = _variant("testbed_artifact_reg")
    cfg.objective.options.beta = 0.04
    cfg.reward.weights = {"testbed_aesthetic": 1.0, "testbed_artifact": 5.0}
    cfg.eval.metrics = {
        "aesthetic": {"reward": "testbed_aesthetic"},
        "artifact": {"reward": "testbed_artifact"},
        "accuracy": {"reward": "compositional", "output": "strict"},
    }
    return cfg


def testbed_par() -> Config:
    """``testbed_artifact_reg`` with the reward replaced by PAR (arXiv 2502.18770) around the hackable
    aesthetic proxy: sigmoid(r - r_ref), r_ref the group mean of the proxy unless the prompts carry a
    ``reference_reward`` column (``rewards/shaping.py``); same KL and evals."""
    cfg = testbed_artifact_reg()
    cfg.preset = "testbed_par"
    cfg.reward.weights = {"par": 1.0}
    cfg.reward.options = {"par": {"base": "testbed_aesthetic"}}
    return cfg


def testbed_nft() -> Config:
    """DiffusionNFT's forward-process objective instead of Flow-GRPO's ratio: ODE rollouts (the paper's
    deterministic sampler; distinct initial noises give the group its spread), trained at every step's
    sigma but the last, 4 optimizer steps of 8 images per iteration, lr 1e-3, |v - v_ref|^2 weight 1e-4."""
    objective = ObjectiveConfig("nft", NFTOptions(beta=1e-4))
    cfg = _variant("testbed_nft", window=WindowConfig("all", AllOptions()), objective=objective)
    cfg.sample.noise_level, cfg.sample.same_noise, cfg.sample.batch_size = 0.0, False, 8
    cfg.optim.steps_per_iteration, cfg.optim.lr = 4, 1e-3
    return cfg


def testbed_pref_grpo() -> Config:
    """Pref-GRPO: the reward of each image is its win rate against the rest of its group (a hard
    pairwise judge over the compositional scores), then group-normalised as in GRPO."""
    return _variant("testbed_pref_grpo", credit=("pref_grpo", PrefGRPOOptions()))


def testbed_ac_flow() -> Config:
    """AC-Flow: per-step advantages from a critic V(x_t, sigma, prompt) trained alongside (GAE lambda
    0.9, |A| <= 2, GRPO advantages for the first 3 iterations); the testbed's pinned window and KL."""
    from ..credit.ac_flow import ACFlowOptions

    window = WindowConfig("fixed", FixedOptions(size=2, start=0))
    return _variant("testbed_ac_flow", credit=("ac_flow", ACFlowOptions()), window=window)


def testbed_tempflow_grpo() -> Config:
    """TempFlow-GRPO: one tree per group branching at the testbed's two SDE steps (4 x 2 = 8 leaves),
    branch-mean process rewards weighted by each step's kernel std; the testbed's pinned window."""
    from ..credit.tempflow import TempFlowOptions

    window = WindowConfig("fixed", FixedOptions(size=2, start=0))
    opts = TempFlowOptions(splits=[0, 1], branch=[4, 2])
    return _variant("testbed_tempflow_grpo", credit=("tempflow_grpo", opts), window=window)


def testbed_gardo() -> Config:
    """GARDO on the reward-hacking set-up of ``testbed_artifact_reg``: the hackable aesthetic proxy alone
    is the training reward, the artifact detector the auxiliary reward whose disagreement gates the KL
    (beta 0.04 on the 10% most uncertain samples, reference refreshed every 15 iterations), advantages
    amplified for above-mean samples far from their group (pooled pixels), no std division."""
    from ..credit.gardo import GARDOOptions
    from .objectives.gardo import GARDOObjectiveOptions

    cfg = testbed_artifact_reg()
    cfg.preset = "testbed_gardo"
    cfg.reward.weights = {"testbed_aesthetic": 1.0}
    cfg.credit = CreditConfig(kind="gardo", scale="none", options=GARDOOptions(auxiliary=["testbed_artifact"]))
    cfg.objective = ObjectiveConfig("gardo", GARDOObjectiveOptions(clip_range=5e-3, beta=0.04))
    return cfg


def testbed_dynamic_treerpo() -> Config:
    """Dynamic-TreeRPO: ``testbed_treegrpo``'s trees with the noise level growing with depth (x1.5 at the
    last split) and LayerTuning-RL's objective (advantage-weighted SFT term 0.1 x 0.98^it, adaptive clip)."""
    from .objectives.dynamic_treerpo import DynamicTreeRPOOptions

    cfg = testbed_treegrpo()
    cfg.preset = "testbed_dynamic_treerpo"
    cfg.credit.options.depth_noise = 0.5
    cfg.objective = ObjectiveConfig("dynamic_treerpo", DynamicTreeRPOOptions(clip_range=5e-3, beta=0.04))
    return cfg


# --- reward-gradient, distributional and few-step objectives (issue 24; benchmarks/bench_reward_grad.py) ---
def _reward_grad(name: str, objective: ObjectiveConfig, window: WindowConfig) -> Config:
    """The testbed with ODE rollouts from distinct noises and the checker's differentiable soft clause score
    as the training reward (its strict verdict stays the eval accuracy); the credit (grpo) is unused."""
    cfg = _variant(name, window=window, objective=objective)
    cfg.sample.noise_level, cfg.sample.same_noise = 0.0, False
    cfg.reward.options = {"compositional": {"output": "soft"}}
    return cfg


def testbed_draft() -> Config:
    """DRaFT-K: the reward gradient through the last K = 2 of the 8 ODE steps (one call per micro-batch)."""
    from .objectives.draft import DRaFTOptions

    window = WindowConfig("fixed", FixedOptions(size=1, start=7))
    return _reward_grad("testbed_draft", ObjectiveConfig("draft", DRaFTOptions(k=2)), window)


def testbed_refl() -> Config:
    """ReFL: one-step x0 prediction at a step drawn in the last quarter of the grid (steps 6-7)."""
    from .objectives.refl import ReFLOptions

    window = WindowConfig("random", RandomOptions(size=1, range=[6, 8]))
    return _reward_grad("testbed_refl", ObjectiveConfig("refl", ReFLOptions()), window)


def testbed_direct_align() -> Config:
    """Direct-Align: known noise injected at a step drawn over the whole grid, one model step, the image
    by interpolation; cleaner steps discounted as the release (3 sigma / (1 + 2 sigma))."""
    from .objectives.direct_align import DirectAlignOptions

    window = WindowConfig("random", RandomOptions(size=1, range=[0, 8]))
    objective = ObjectiveConfig("direct_align", DirectAlignOptions())
    return _reward_grad("testbed_direct_align", objective, window)


def testbed_dragon() -> Config:
    """DRAGON: each prompt's 8 ODE samples split 4 / 4 by mean reward + 0.1 log Vendi, KTO contrast at
    two random steps; the reward is the checker's hard fraction (DRAGON needs no gradient)."""
    from .objectives.dragon import DragonOptions

    cfg = _reward_grad("testbed_dragon", ObjectiveConfig("dragon", DragonOptions()), None)
    cfg.reward.options = {}
    return cfg


def testbed_r0() -> Config:
    """R0: a 4-step generator from the base (eval with its 4 ODE steps), regularised reward maximisation."""
    from .objectives.r0 import R0Options

    window = WindowConfig("fixed", FixedOptions(size=1, start=0))
    cfg = _reward_grad("testbed_r0", ObjectiveConfig("r0", R0Options()), window)
    cfg.sample.num_steps, cfg.eval.num_steps = 4, 4
    return cfg
