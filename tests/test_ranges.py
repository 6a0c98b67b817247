"""Declared ranges: every numeric field of the training config (each variant's options included)
declares one, and the validator refuses what the issue named before anything loads."""

from __future__ import annotations

import math
import re

import pytest

from flowalign.credit import CREDIT
from flowalign.ranges import check_ranges, in_range, undeclared
from flowalign.sampling.windows import WINDOWS
from flowalign.train import apply_overrides, get_preset
from flowalign.train.checks import validate
from flowalign.train.config import Config
from flowalign.train.objectives import OBJECTIVES


def test_rules_by_hand():
    assert in_range(1e-9, "(0, inf)") and not in_range(0.0, "(0, inf)") and not in_range(math.inf, "(0, inf)")
    assert in_range(math.inf, "(0, inf]") and in_range(0.0, "[0, 1]") and not in_range(1.0, "[0, 1)")
    assert in_range(-3.0, "free") and not in_range(math.nan, "free") and not in_range(math.inf, "free")


def test_every_numeric_field_declares_a_range():
    missing = undeclared(Config)
    for table in (WINDOWS, CREDIT, OBJECTIVES):
        for kind, entry in table.items():
            missing += [f"{kind}.{k}" for k in undeclared(entry.options)]
    assert not missing, missing


@pytest.mark.parametrize(
    "item, named",
    [
        ("optim.max_grad_norm=0", "optim.max_grad_norm=0.0 is out of range"),
        ("optim.max_grad_norm=-1", "optim.max_grad_norm=-1.0 is out of range"),
        ("optim.lr=0", "optim.lr=0.0 is out of range"),
        ("optim.lr=inf", "optim.lr=inf is out of range"),
        ("optim.lr=nan", "optim.lr=nan is out of range"),
        ("objective.options.clip_range=0", "objective.options.clip_range=0.0 is out of range"),
        ("objective.options.clip_range=-0.1", "objective.options.clip_range=-0.1 is out of range"),
        ("train.iterations=0", "train.iterations=0 is out of range"),
        ("sample.group_size=1", "sample.group_size=1: credit 'grpo' compares"),
        ("optim.betas=[0.9,1.5]", "optim.betas=[0.9, 1.5] (entry 1.5) is out of range"),
        ("sample.window.options.start=-1", "sample.window.options.start=-1 is out of range"),
    ],
)
def test_refused_before_anything_loads(item, named):
    cfg = apply_overrides(get_preset("testbed"), [item])
    with pytest.raises(ValueError, match=re.escape(named)):
        validate(cfg)


def test_free_signs_and_inf_clipping_are_accepted():
    cfg = apply_overrides(
        get_preset("testbed_artifact_reg"), ["reward.weights.testbed_artifact=-5", "optim.max_grad_norm=inf"]
    )
    check_ranges(cfg)
