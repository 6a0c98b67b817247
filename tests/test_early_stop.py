"""Early stopping on a held-out gold reward (flowalign/train/early_stop.py): the best eval, the
patience count and the restored weights, by hand; the config errors."""

from types import SimpleNamespace

import pytest
import torch

from flowalign.overrides import apply_overrides
from flowalign.train import early_stop
from flowalign.train.checks import validate
from flowalign.train.presets import get_preset


def fake_run(patience=2, min_delta=0.0):
    cfg = get_preset("testbed")
    cfg.eval.early_stop, cfg.eval.early_stop_patience, cfg.eval.early_stop_min_delta = "gold", patience, min_delta
    p = torch.nn.Parameter(torch.zeros(3))
    printed = []
    acc = SimpleNamespace(print=lambda *a, **k: printed.append(a[0]))
    return SimpleNamespace(cfg=cfg, params=[p], best=None, result=SimpleNamespace(early_stop=None), acc=acc), printed


def test_best_patience_and_restore_by_hand():
    run, printed = fake_run(patience=2, min_delta=0.01)
    # evals at iterations 0, 10, 20, 30, 40 with gold 0.50, 0.70, 0.705, 0.65, 0.69; the weights at each
    # eval are filled with the iteration number so the restored ones name their eval.
    for it, gold in [(0, 0.50), (10, 0.70), (20, 0.705), (30, 0.65), (40, 0.69)]:
        with torch.no_grad():
            run.params[0].fill_(float(it))
        early_stop.track(run, it, {"eval/gold": gold})
        # 0.705 beats 0.70 by 0.005 < min_delta 0.01: not an improvement -> since 1 at it 20, 2 at it 30
        assert early_stop.due(run) == (it >= 30)
        if it == 30:
            break
    assert run.best.iteration == 10 and run.best.value == 0.70 and run.best.since == 2
    early_stop.restore_best(run)
    assert run.params[0].tolist() == [10.0, 10.0, 10.0]  # the weights of the eval at iteration 10
    assert run.result.early_stop == {"iteration": 10, "value": 0.70}
    assert "iteration 10" in printed[0]


def test_off_by_default_and_no_stop_while_improving():
    run, _ = fake_run(patience=1)
    for it, gold in enumerate([0.1, 0.2, 0.3]):
        early_stop.track(run, it, {"eval/gold": gold})
        assert not early_stop.due(run)
    run.cfg.eval.early_stop = ""
    run.best = None
    early_stop.track(run, 5, {"eval/gold": 0.0})
    assert run.best is None and not early_stop.due(run)


@pytest.mark.parametrize(
    "items, match",
    [
        (
            ["eval.early_stop=gold"],
            r"eval.early_stop='gold' is not an eval metric; choose one of \['reward', 'accuracy'\]",
        ),
        (["eval.early_stop=accuracy", "eval.every=0"], "needs periodic evals"),
        (["eval.early_stop=accuracy", "train.ema=true"], "train.ema=true is not supported"),
        (["eval.early_stop=accuracy", "eval.early_stop_patience=0"], "early_stop_patience"),
    ],
)
def test_config_errors(items, match):
    with pytest.raises(ValueError, match=match):
        validate(apply_overrides(get_preset("testbed"), items))


def test_valid_config_passes():
    validate(apply_overrides(get_preset("testbed"), ["eval.early_stop=accuracy"]))


def test_keep_best_at_the_end_of_a_run():
    run, _ = fake_run(patience=3)
    for it, gold in [(0, 0.5), (10, 0.7), (20, 0.6)]:  # the budget ends before the patience: since = 1 < 3
        with torch.no_grad():
            run.params[0].fill_(float(it))
        early_stop.track(run, it, {"eval/gold": gold})
    assert not early_stop.due(run)
    early_stop.keep_best(run)
    assert run.params[0].tolist() == [10.0] * 3 and run.result.early_stop == {"iteration": 10, "value": 0.7}
    run2, _ = fake_run(patience=3)
    early_stop.track(run2, 0, {"eval/gold": 0.5})
    early_stop.keep_best(run2)  # the last eval is the best: nothing to restore
    assert run2.result.early_stop is None
