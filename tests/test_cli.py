"""The command line: one config language (``[PRESET] key=value ...`` + flag shorthands) in train, steer,
gallery and testbed; one error path (an unknown key is one stderr line naming the closest valid key,
exit 2, no traceback, nothing written); the dispatcher imports only the chosen command."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowalign.cli import main
from flowalign.overrides import unknown_key
from flowalign.rewards.base import Reward

ROOT = Path(__file__).resolve().parents[1]
needs_assets = pytest.mark.skipif(
    not (ROOT / "assets" / "testbed" / "pipeline" / "model_index.json").exists(),
    reason="assets/testbed not built (python scripts/train_testbed.py)",
)


class Redness(Reward):  # mean of the red channel minus the others: cheap, offline, any model
    name, differentiable = "redness", False

    def score(self, images, prompts, **metadata):
        return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


@pytest.fixture
def redness():
    from flowalign.rewards import REWARDS

    REWARDS["redness"] = Redness
    yield
    REWARDS.pop("redness", None)


def printed_config(capsys, argv: list[str]) -> dict:
    assert main([*argv, "--print-config"]) == 0
    return json.loads(capsys.readouterr().out)


def fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# --- PRESET key=value works in every config command -------------------------------------------------------
def test_train_preset_and_overrides(capsys):
    cfg = printed_config(capsys, ["train", "testbed", "sample.num_steps=3"])
    assert cfg["preset"] == "testbed" and cfg["sample"]["num_steps"] == 3


def test_steer_preset_overrides_and_flags_meet_in_one_config(capsys):
    cfg = printed_config(capsys, ["steer", "testbed_fk_tuned", "method.options.particles=8", "--lam", "3"])
    assert cfg["preset"] == "testbed_fk_tuned" and cfg["method"]["kind"] == "fk"
    opts = cfg["method"]["options"]
    assert (opts["particles"], opts["lam"], opts["potential"]) == (8, 3.0, "rt")  # override, flag, preset
    assert (opts["resample_steps"], opts["noise_steps"]) == ("7-14", "6-15")
    # --method first, so the other flags land in that method's options; --set is method.options.KEY
    cfg = printed_config(capsys, ["steer", "--method", "bon", "--particles", "6", "--set", "max_batch=2"])
    assert cfg["method"] == {
        "kind": "bon",
        "options": {
            "nfe_budget": None,
            "step": None,
            "noise_level": None,
            "noise_steps": None,
            "particles": 6,
            "max_batch": 2,
        },
    }
    flags = printed_config(capsys, ["steer", "--prompt", "two red circles", "--method", "fk", "--seed", "3"])
    keys = printed_config(capsys, ["steer", "testbed", 'prompts=["two red circles"]', "method.kind=fk", "seed=3"])
    assert flags == keys


def test_steer_runs_a_preset_with_overrides(tmp_path, monkeypatch, capsys):
    from flowalign import rewards

    monkeypatch.setattr(rewards, "load_reward", lambda name, path=None, **kw: Redness())
    out = tmp_path / "steer"
    argv = ["steer", "testbed", "model=tiny-sd3", 'prompts=["two red circles"]', "steps=4"]
    assert main([*argv, "method.options.particles=2", "method.options.noise_steps=0-2", f"out={out}"]) == 0
    report = json.loads((out / "steer.json").read_text())
    assert report["method"] == "fk_max" and report["nfe"] == 2 * 4 and (out / report["images"][0]).is_file()
    assert report["kwargs"] == {
        "num_particles": 2,
        "lam": 10.0,
        "potential": "max",
        "resample_steps": None,
        "noise_steps": [0, 1, 2],
    }
    assert report["config"]["preset"] == "testbed" and report["config"]["method"]["options"]["particles"] == 2
    assert "fk_max: mean reward" in capsys.readouterr().out


@needs_assets
def test_steer_tuned_preset_on_the_testbed(tmp_path):
    out = tmp_path / "steer"
    assert (
        main(["steer", "testbed_fk_tuned", 'prompts=["two red circles"]', "method.options.particles=2", f"out={out}"])
        == 0
    )
    report = json.loads((out / "steer.json").read_text())
    assert report["method"] == "fk_rt" and report["steps"] == 20 and report["nfe"] == 2 * 20
    assert report["kwargs"]["resample_steps"] == list(range(7, 15))
    assert report["kwargs"]["noise_steps"] == list(range(6, 16))


def test_gallery_preset_overrides_and_flags(capsys):
    cfg = printed_config(capsys, ["gallery", "testbed_steering", "seeds=0,1", "--num-prompts", "2"])
    assert cfg["preset"] == "testbed_steering" and cfg["seeds"] == [0, 1] and cfg["num_prompts"] == 2
    assert cfg["methods"][0] == "base" and cfg["methods"][2].startswith("fk:particles=4,potential=rt")
    # methods=...: a comma followed by a method kind starts the next spec; the flags give the same list
    keys = printed_config(capsys, ["gallery", "methods=base,fk:particles=4,resample_steps=3,6,lora:run/a,b"])
    flags = printed_config(
        capsys,
        ["gallery", "--method", "base", "--method", "fk:particles=4,resample_steps=3,6", "--method", "lora:run/a,b"],
    )
    assert keys["methods"] == flags["methods"] == ["base", "fk:particles=4,resample_steps=3,6", "lora:run/a,b"]
    assert printed_config(capsys, ["gallery", "--no-plots", "--seeds", "4"])["plots"] is False


def test_gallery_runs_a_preset_with_overrides(tmp_path, redness, capsys):
    out = tmp_path / "gallery"
    argv = ["gallery", "testbed_quick", "model=tiny-sd3", 'prompts=["a red circle"]', "rewards=redness", "steps=2"]
    assert main([*argv, "methods=base,fk:particles=2", "plots=false", f"out={out}"]) == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["method"], r["seed"], r["nfe"]) for r in rows] == [("base", 0, 2), ("fk", 0, 2 * 2)]
    assert "2 new image(s), 2 in all" in capsys.readouterr().out
    assert not (out / "plots").exists()


def test_gallery_spec_and_steer_keys_build_the_same_method():
    from flowalign.gallery import parse_method
    from flowalign.overrides import resolve
    from flowalign.steering.config import STEER_PRESETS

    spec = parse_method("dts_star:particles=2,lambda=3,noise_steps=6-15,c_uct=0.1,label=d")
    keys = [
        "method.kind=dts_star",
        "method.options.particles=2",
        "method.options.lam=3",
        "method.options.noise_steps=6-15",
        "method.options.c_uct=0.1",
    ]
    assert spec.method == resolve(STEER_PRESETS, keys, "testbed").method


def test_every_method_option_is_a_keyword_of_its_method():
    from flowalign.steering import SEARCH
    from flowalign.steering.config import METHODS, SteerMethod, method_kwargs

    samples = {int: 1, float: 0.5, str: "x"}
    for kind in METHODS:
        method = SteerMethod(kind, SteerMethod.options_for(kind)())
        for f in dataclasses.fields(method.options):
            if getattr(method.options, f.name) is None:
                tp = next(t for t in samples if t.__name__ in str(f.type))
                value = "1,2" if f.name.endswith("_steps") and tp is str else samples[tp]
                setattr(method.options, f.name, value)
        kwargs = method_kwargs(method, num_steps=4)
        params = inspect.signature(SEARCH[kind]).parameters
        assert set(kwargs) <= set(params), (kind, sorted(set(kwargs) - set(params)))


@needs_assets
def test_testbed_key_value_overrides(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "row.png"
    assert main(["testbed", "sample", "two red circles", "n=2", "scale=1", f"output={out}", "--steps", "2"]) == 0
    assert Image.open(out).size == (2 * 32, 32) and "all_correct=" in capsys.readouterr().out


# --- an unknown key: one line, exit 2, no traceback, nothing written -------------------------------------
def expected(argv0: str, key: str, where: str, part: str, names: list[str]) -> str:
    return f"flowalign {argv0}: error: {unknown_key(key, where, part, names)}"


def unknown_key_cases(out: Path) -> dict[str, tuple[list[str], str, str]]:
    """command -> (argv, the expected stderr line, the closest valid key)."""
    from flowalign.gallery import GalleryConfig
    from flowalign.steering.config import FKOptions
    from flowalign.train.config import SampleConfig

    return {
        "train": (
            ["train", "testbed", f"train.output_dir={out}", "sample.num_step=3"],
            expected("train", "sample.num_step", "sample", "num_step", fields(SampleConfig)),
            "num_steps",
        ),
        "steer": (
            ["steer", "testbed_fk_tuned", f"out={out}", "method.options.partcles=3"],
            expected("steer", "method.options.partcles", "method.options", "partcles", fields(FKOptions)),
            "particles",
        ),
        "steer --set": (
            ["steer", "--out", str(out), "--set", "resample_step=3"],
            expected("steer", "method.options.resample_step", "method.options", "resample_step", fields(FKOptions)),
            "resample_steps",
        ),
        "gallery": (
            ["gallery", "testbed", f"out={out}", "seed=0"],
            expected("gallery", "seed", "the config", "seed", fields(GalleryConfig)),
            "seeds",
        ),
    }


@pytest.mark.parametrize("command", ["train", "steer", "steer --set", "gallery"])
def test_unknown_key_is_one_line_exit_2_and_nothing_written(command, tmp_path):
    out = tmp_path / "out"
    argv, line, closest = unknown_key_cases(out)[command]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FLOWALIGN_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "flowalign.cli", *argv], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [line] and proc.stdout == ""
    assert f"(did you mean ['{closest}'" in line and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output folder, no runs/ in the cwd


def test_unknown_key_in_process_and_debug_reraises(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    for argv, line, _ in unknown_key_cases(out).values():
        assert main(argv) == 2
        assert capsys.readouterr().err.splitlines() == [line]
    assert not out.exists()
    monkeypatch.setenv("FLOWALIGN_DEBUG", "1")
    with pytest.raises(ValueError, match=r"unknown config key 'seed': the config has no field 'seed'"):
        main(["gallery", "seed=0"])


def test_testbed_unknown_key_and_a_misspelt_gallery_spec_are_one_clear_error(tmp_path, capsys):
    from flowalign.testbed.jobs import EvalJob

    assert main(["testbed", "eval", "n_prompt=3"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        expected("testbed eval", "n_prompt", "the config", "n_prompt", fields(EvalJob))
    ]
    out = tmp_path / "g"
    assert main(["gallery", "methods=base,fk:partcles=2", f"out={out}"]) == 2  # the KIND:k=v shorthand
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and not out.exists()
    assert err[0].startswith(
        "flowalign gallery: error: method spec 'fk:partcles=2': fk takes no option(s) ['partcles']"
    )


# --- the dispatcher -------------------------------------------------------------------------------------------
def test_dispatcher_imports_only_the_chosen_command():
    code = (
        "import sys; from flowalign.cli import main; main(['steer', '--print-config']); "
        "print(sorted(m for m in sys.modules if m.startswith(('flowalign.cli.', 'flowalign.gallery', "
        "'flowalign.train'))), file=sys.stderr)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert proc.stderr.strip() == "['flowalign.cli.steer']"


def test_info_lists_every_registry_a_config_kind_may_name(capsys):
    from flowalign.cli import main

    assert main(["info"]) == 0
    out = capsys.readouterr().out
    objectives = "direct_align, draft, dragon, dynamic_treerpo, flow_grpo, gardo, grpo_guard, nft, r0, refl"
    assert f"objectives (objective.kind): {objectives}" in out
    assert "windows (sample.window.kind): all, fixed, geometric, progressive, random, table" in out
    credit = "ac_flow, branchgrpo, dense, euphonium, g2rpo, gardo, grpo, pref_grpo, tempflow_grpo, treegrpo, "
    credit += "turning_point"
    assert f"credit (credit.kind): {credit}" in out
