"""TempFlow-GRPO (arXiv 2508.04324): branch-mean process rewards and noise-aware step weights on a
hand-built tree, the config checks, and a tiny training run on tree rollouts."""

import re

import pytest
import torch
from test_trainer import PROMPTS, TINY, brightness

from flowalign.credit import CREDIT
from flowalign.credit.tempflow import TempFlowOptions, check_tempflow, noise_weights, tempflow_grpo
from flowalign.credit.tree import tree_to_batch
from flowalign.train import apply_overrides, get_preset
from flowalign.train.checks import validate
from flowalign.types import TreeRollout

close = torch.testing.assert_close


def two_level_tree(std0: float = 0.4, std1: float = 0.2) -> TreeRollout:
    """Root 0 splits at step 0 into nodes 1, 2 (kernel std std0); each splits at step 1 into two
    leaves: 3, 4 under 1 and 5, 6 under 2 (std std1). Two steps, one tree."""
    parent = torch.tensor([-1, 0, 0, 1, 1, 2, 2])
    step = torch.tensor([0, 1, 1, 2, 2, 2, 2])
    std = torch.tensor([0.0, std0, std0, std1, std1, std1, std1])
    return TreeRollout(
        latents=torch.zeros(7, 1),
        parent=parent,
        step=step,
        depth=torch.tensor([0, 1, 1, 2, 2, 2, 2]),
        root=torch.zeros(7, dtype=torch.long),
        log_prob=torch.zeros(7),
        mean=None,
        std=std,
        noise_level=torch.where(std > 0, 0.7, 0.0),
        trainable=std > 0,
        sigmas=torch.tensor([1.0, 0.5, 0.0]),
        step_kind="flow_sde",
    )


def test_process_rewards_and_noise_weights_by_hand():
    # leaves 3, 4, 5, 6 get r = [1, 3, 2, 6]. Branch means: R(1) = (1 + 3)/2 = 2, R(2) = (2 + 6)/2 = 4,
    # R(root) = 3. Gains: node 1: 2 - 3 = -1, node 2: +1, node 3: 1 - 2 = -1, node 4: +1, node 5: 2 - 4 = -2,
    # node 6: +2. Tree std (population): deviations [-2, 0, -1, 3], squares 14 / 4 = 3.5 -> 1.8708287.
    # Weights: per-step std 0.4 (step 0) and 0.2 (step 1), mean 0.3 -> w = 4/3 and 2/3.
    # A = w * gain / std: node 1: (4/3)(-1)/1.8708287 = -0.7126966; node 3: (2/3)(-1)/1.8708287 = -0.3563483;
    # node 5: (2/3)(-2)/1.8708287 = -0.7126966.
    tree = two_level_tree()
    out = tempflow_grpo(tree, torch.tensor([1.0, 3.0, 2.0, 6.0]), eps=0.0)
    a1, a3 = 0.7126966, 0.3563483
    close(out.advantages, torch.tensor([0.0, -a1, a1, -a3, a3, -a1, a1]))
    assert out.mask.tolist() == [False] + [True] * 6
    close(out.node_rewards, torch.tensor([3.0, 2.0, 4.0, 1.0, 3.0, 2.0, 6.0]))
    assert out.stats["weight_max"] == pytest.approx(4 / 3) and out.stats["weight_min"] == pytest.approx(2 / 3)
    # weighting off: A = gain / std -> node 1: -0.5345225, node 3: -0.5345225, node 5: -1.0690450
    flat = tempflow_grpo(tree, torch.tensor([1.0, 3.0, 2.0, 6.0]), eps=0.0, weighting="none")
    u = 0.5345225
    close(flat.advantages, torch.tensor([0.0, -u, u, -u, u, -2 * u, 2 * u]))
    # scale none: the raw weighted gains -> node 1: (4/3)(-1), node 5: (2/3)(-2)
    raw = tempflow_grpo(tree, torch.tensor([1.0, 3.0, 2.0, 6.0]), scale="none")
    close(raw.advantages[[1, 5]], torch.tensor([-4 / 3, -4 / 3]))


def test_weights_follow_the_kernel_std_and_average_one():
    # std 0.9 at step 0, 0.3 at step 1: mean 0.6 -> w = [1.5, 0.5] (mean 1 over the branching steps)
    tree = two_level_tree(0.9, 0.3)
    w = noise_weights(tree, tree.parent >= 0)
    close(w, torch.tensor([1.0, 1.5, 1.5, 0.5, 0.5, 0.5, 0.5]))
    assert torch.equal(noise_weights(tree, tree.parent >= 0, "none"), torch.ones(7))
    with pytest.raises(ValueError, match="weighting 'sqrt'"):
        noise_weights(tree, tree.parent >= 0, "sqrt")


def test_tied_tree_is_masked_and_batch_layout():
    tree = two_level_tree()
    tied = tempflow_grpo(tree, torch.full((4,), 0.5))
    assert not tied.mask.any() and (tied.advantages == 0).all() and tied.stats["zero_std_frac"] == 1.0
    out = tempflow_grpo(tree, torch.tensor([1.0, 3.0, 2.0, 6.0]), eps=0.0)
    tb = tree_to_batch(tree, out)  # 4 root->leaf rows x 2 steps; the shared step-0 edges train once
    assert tb.advantages.mask.sum() == 6 and tb.advantages.mask[:, 1].all()
    close(tb.advantages.advantages[:, 1], out.advantages[3:])


def test_registered_and_checked():
    scheme = CREDIT["tempflow_grpo"]
    assert scheme.fn is tempflow_grpo and scheme.options is TempFlowOptions and scheme.needs == ("tree",)
    validate(get_preset("testbed_tempflow_grpo"))
    cfg = apply_overrides(get_preset("testbed_tempflow_grpo"), ["credit.options.weighting=sqrt"])
    with pytest.raises(ValueError, match=re.escape("credit.options.weighting='sqrt'")):
        validate(cfg)
    cfg = apply_overrides(get_preset("testbed_tempflow_grpo"), ["credit.options.branch=[2]"])  # 2 x 2 = 4 != 8
    with pytest.raises(ValueError, match="gives 4 leaves per tree"):
        validate(cfg)
    cfg = apply_overrides(get_preset("testbed_tempflow_grpo"), ["credit.options.splits=[0,2]"])  # window size 2
    with pytest.raises(ValueError, match=re.escape("credit.options.splits=[0, 2]")):
        check_tempflow(cfg.credit.options, cfg)


@pytest.mark.e2e
def test_tiny_training_run_changes_parameters(tmp_path):
    from flowalign.train.run import main, resolve_config

    tree = ["credit.options.splits=[0,1]", "credit.options.branch=[2,2]"]  # 4 leaves = the group
    items = TINY + ["credit.kind=tempflow_grpo", *tree, f"train.output_dir={tmp_path}/run"]
    cfg, _ = resolve_config(None, items, None)
    assert isinstance(cfg.credit.options, TempFlowOptions)
    torch.manual_seed(0)
    res = main(cfg, reward_fn=brightness, prompts=PROMPTS)
    assert res.state.optimizer_step > 0 and res.state.skipped_steps == 0
    lora_b = {n: p for n, p in res.model.transformer.named_parameters() if p.requires_grad and "lora_B" in n}
    assert lora_b and any(bool((p != 0).any()) for p in lora_b.values())
