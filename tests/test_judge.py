"""VLM judges over an OpenAI-compatible chat endpoint: the parsers by hand, then a real server process
(``tests/servers/judge_server.py``: FastAPI + uvicorn, a deterministic brightness judge; ``e2e``)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra: pip install 'flowalign[serve]'")

from servers.process import free_port, start, stop  # noqa: E402

from flowalign.credit.pref import win_rates  # noqa: E402
from flowalign.rewards import load_reward  # noqa: E402
from flowalign.rewards.judge import parse_pairwise, parse_pointwise  # noqa: E402

SERVER = Path(__file__).resolve().parent / "servers" / "judge_server.py"


def test_parsers_by_hand():
    assert parse_pointwise("Alignment good. Final Score: 3.5") == 3.5
    assert parse_pointwise("Final Score:4") == 4.0
    assert parse_pointwise("Final Score: 7") is None and parse_pointwise("no verdict") is None
    assert parse_pairwise("Image 2 is better") == 1
    assert parse_pairwise("Image 1 is better at first sight, but overall Image 2 is better") == 1  # last one
    assert parse_pairwise("they are equal") is None


@pytest.fixture(scope="module")
def judge_url():
    proc, url = start([sys.executable, str(SERVER), "--port", "0"])
    yield url
    stop(proc)


def grey(*levels: int) -> torch.Tensor:
    """Uniform images of the given 8-bit grey levels (exact through PNG)."""
    return torch.stack([torch.full((3, 8, 8), v / 255) for v in levels])


@pytest.mark.e2e
def test_pointwise_scores_and_parse_failures(judge_url):
    judge = load_reward("vlm_judge", url=judge_url, concurrency=2)
    assert judge.judge.model == "toy-judge"
    out = judge(grey(51, 204, 0), ["a cat", "a cat", "a cat [garble]"])
    # S = 1 + 4 * level: 51/255 = 0.2 -> 1.8 -> 1.8/5 = 0.36; 204/255 = 0.8 -> 4.2 -> 0.84; garbled -> NaN
    assert out[:2].tolist() == pytest.approx([0.36, 0.84]) and math.isnan(out[2])
    assert judge.parse_failures == 1 and judge.requests == 3
    with pytest.raises(ValueError, match=r"unknown response format.*choices\[0\]\.message\.content"):
        judge(grey(51), ["a cat [raw]"])


@pytest.mark.e2e
def test_pairwise_win_rates_in_groups_and_consistency(judge_url):
    judge = load_reward("vlm_pairwise", url=judge_url, concurrency=4)
    prompts = ["a dog"] * 4 + ["a cup"] * 2
    rates = judge(grey(51, 204, 102, 153, 10, 20), prompts)
    # group "a dog" (levels 51, 204, 102, 153): the brightest beats 3 of 3, then 2/3, 1/3, 0/3; "a cup": 0, 1
    assert rates.tolist() == pytest.approx([0, 1, 1 / 3, 2 / 3, 0, 1])
    assert judge.requests == 6 + 1 and judge.parse_failures == 0  # C(4,2) + C(2,2) pairs
    # the same as Pref-GRPO's win rate (credit/pref.py, hard judge) on the judge's hidden scalar (brightness)
    levels, groups = torch.tensor([51.0, 204, 102, 153, 10, 20]), torch.tensor([0, 0, 0, 0, 1, 1])
    assert torch.allclose(rates, win_rates(levels, groups, judge="hard"))
    assert judge.consistency(grey(10, 200, 90), grey(20, 100, 80), ["x"] * 3) == 1.0
    garbled = judge(grey(10, 20, 30), ["z [garble]"] * 3)
    assert torch.isnan(garbled).all() and judge.parse_failures == 3  # every pair dropped: rows masked


@pytest.mark.e2e
def test_start_up_errors_are_one_clear_error(judge_url):
    with pytest.raises(ValueError, match="judge: cannot reach http://127.0.0.1:.*/v1/models"):
        load_reward("vlm_judge", url=f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ValueError, match=r"model 'qwen' is not served .*\['toy-judge'\]"):
        load_reward("vlm_pairwise", url=judge_url, model="qwen")
    with pytest.raises(ValueError, match="pass the server's base URL"):
        load_reward("vlm_judge")
