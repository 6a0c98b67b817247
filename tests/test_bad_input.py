"""Every boundary refuses bad input with one clear error, before anything loads or is written.

A table of bad inputs to ``flowalign train | steer | gallery | testbed`` (run in-process through
``flowalign.cli.main`` in an empty working folder) and to the Python API. Each command case must exit 2
with exactly one stderr line ``flowalign <cmd>: error: ...`` naming the bad key / flag and value (argparse's
own refusals print one line too), no traceback, and leave the folder as it was (no run or output
folder). Each API case raises one ValueError naming the argument. Loading a model, a pipeline or a
training run fails the test (``no_models``): every case is refused before that.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest

from flowalign.cli import main

# --- fixture files (written into the working folder; relative names below refer to them) ----------------
BAD_UTF8 = b"two red circles\n\xff\xfe\xfa not utf-8\n"


def make_files(root: Path) -> None:
    import torch
    from safetensors.torch import save_file

    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("# only a comment\n\n   \n")
    (root / "bad_utf8.txt").write_bytes(BAD_UTF8)
    (root / "bad.jsonl").write_text('{"text": "two red circles"}\n')
    (root / "empty_prompt.jsonl").write_text('{"prompt": ""}\n')
    (root / "afile").write_text("not a folder\n")
    (root / "adir").mkdir()
    save_file({"w": torch.zeros(4096)}, str(root / "good.safetensors"))
    data = (root / "good.safetensors").read_bytes()
    (root / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    (root / "junk.safetensors").write_bytes(b"this is not a safetensors file at all")
    for name, blob in (("lora_trunc", data[: len(data) // 2]), ("lora_junk", b"PK\x03\x04 a zip, not safetensors")):
        (root / name).mkdir()
        (root / name / "pytorch_lora_weights.safetensors").write_bytes(blob)


# --- the table: (command, argv after the command, substrings the error line must hold) -----------------------
TRAIN = [
    (["optim.max_grad_norm=-1"], ["optim.max_grad_norm=-1", "out of range"]),
    (["optim.lr=0"], ["optim.lr=0", "out of range"]),
    (["optim.lr=inf"], ["optim.lr=inf", "out of range"]),
    (["objective.options.clip_range=-0.1"], ["objective.options.clip_range=-0.1"]),
    (["train.iterations=0"], ["train.iterations=0"]),
    (["sample.group_size=1"], ["sample.group_size", "1"]),
    (["sample.guidance_scale=-1"], ["sample.guidance_scale=-1"]),
    (["sample.noise_level=-0.5"], ["sample.noise_level=-0.5"]),
    (["eval.num_steps=0"], ["eval.num_steps=0"]),
    (["sample.num_steps=0"], ["sample.num_steps=0"]),
    (["sample.noise_levels=[0.1,-1]"], ["sample.noise_levels", "-1"]),
    (["sample.num_step=3"], ["sample.num_step", "num_steps"]),  # unknown key: the closest valid one
    (["optim.lr=abc"], ["optim.lr", "abc"]),  # bad type
    (["nopreset"], ["unknown preset 'nopreset'"]),
    (["testbed", "iterations"], ["'iterations'", "key=value"]),
    (["sample.step=foo"], ["sample.step='foo'"]),
    (["credit.kind=foo"], ["credit", "'foo'"]),
    (["model.dtype=fp64"], ["model.dtype='fp64'"]),
    (["model.path=missing_model"], ["model.path='missing_model'", "does not exist"]),
    (["reward.weights.nope=1"], ["'nope'", "reward.weights"]),
    (["data.train=missing.txt"], ["missing.txt", "does not exist"]),
    (["data.train=empty.txt"], ["empty.txt", "no prompts"]),
    (["data.train=blank.txt"], ["blank.txt", "no prompts"]),
    (["data.train=bad_utf8.txt"], ["bad_utf8.txt", "UTF-8"]),
    (["data.train=bad.jsonl"], ["bad.jsonl", "'prompt'"]),
    (["data.train=empty_prompt.jsonl"], ["empty_prompt.jsonl", "'prompt'"]),
    (["data.train=adir"], ["adir", "folder"]),
    (["data.eval=empty.txt"], ["empty.txt", "no prompts"]),
    (["--resume", "adir"], ["--resume adir"]),
    (["train.output_dir=afile"], ["train.output_dir", "afile"]),
    (["train.runs_dir=afile"], ["train.runs_dir", "afile"]),
    (["train.mixed_precision=foo"], ["train.mixed_precision", "foo"]),
    (["train.budget_clock=gpu"], ["train.budget_clock", "gpu", "wall or cpu"]),
    (["eval.early_stop=gold"], ["eval.early_stop='gold'", "not an eval metric"]),
    # issue 23 / 24: the methods' own checks
    (["testbed_ac_flow", "credit.options.critic_lr=0"], ["credit.options.critic_lr=0", "out of range"]),
    (["credit.kind=gardo"], ["credit.kind=gardo", "uncertainty source"]),  # one reward, no auxiliary
    (["testbed_draft", 'reward.weights={"compositional": 1}', "reward.options={}"], ["'draft'", "not differentiable"]),
    (["testbed_draft", "objective.options.k=20"], ["objective.options.k=20", "8 sampler steps"]),
    (["objective.kind=dragon", "sample.group_size=2"], ["objective.kind='dragon'", "sets of >= 2"]),
]
STEER = [
    (["--particles", "0"], ["--particles", "'0'"]),
    (["--particles", "-3"], ["--particles", "'-3'"]),
    (["--particles", "abc"], ["--particles", "'abc'"]),
    (["--lam", "-1"], ["--lam", "'-1'"]),
    (["method.options.lam=inf"], ["method.options.lam=inf"]),
    (["--steps", "0"], ["--steps", "'0'"]),  # not silently the model's 20
    (["--nfe-budget", "0"], ["--nfe-budget", "'0'"]),
    (["--noise-level", "-0.5"], ["--noise-level", "'-0.5'"]),
    (["--cfg", "-1"], ["--cfg", "'-1'"]),
    (["--size", "0"], ["--size", "'0'"]),
    (["--size", "33"], ["size=33", "multiple of 4"]),
    (["--max-seq", "0"], ["--max-seq", "'0'"]),
    (["--seed", "-1"], ["--seed", "'-1'"]),
    (["--method", "foo"], ["--method", "'foo'"]),
    (["--resample-steps", "30-40"], ["resample_steps", "30", "20-step grid"]),
    (["--noise-steps", "25"], ["noise_steps", "25", "20-step grid"]),
    (["--resample-steps", "abc"], ["--resample-steps", "'abc'"]),
    (["--potential", "foo"], ["method.options.potential='foo'"]),
    (["--step-kind", "foo"], ["method.options.step='foo'"]),
    (["--step-kind", "ode"], ["step='ode'", "stochastic"]),
    (["--set", "ess_threshold=2"], ["method.options.ess_threshold=2"]),
    (["--set", "final=foo"], ["method.options.final='foo'"]),
    (["--set", "oops"], ["--set 'oops'"]),
    (["--method", "dts_star", "--nfe-budget", "5"], ["nfe_budget=5", "one rollout"]),
    (["--method", "dts_star", "--set", "widen_alpha=2"], ["method.options.widen_alpha=2"]),
    (["method.options.partcles=3"], ["method.options.partcles", "particles"]),  # unknown key
    (["method.options.particles=abc"], ["method.options.particles", "'abc'"]),  # bad type
    (["nopreset"], ["unknown preset 'nopreset'"]),
    (["--reward", "foo"], ["reward='foo'"]),
    (["--reward-path", "missing.safetensors"], ["reward_path='missing.safetensors'", "does not exist"]),
    (["--reward-path", "trunc.safetensors"], ["reward_path='trunc.safetensors'"]),
    (["--reward-path", "junk.safetensors"], ["reward_path='junk.safetensors'"]),
    (["--model", "missing_model"], ["model='missing_model'", "does not exist"]),
    (["--prompts-file", "missing.txt"], ["missing.txt", "does not exist"]),
    (["--prompts-file", "empty.txt"], ["empty.txt", "no prompts"]),
    (["--prompts-file", "bad_utf8.txt"], ["bad_utf8.txt", "UTF-8"]),
    (["--prompts-file", "adir"], ["adir", "folder"]),
    (["--prompt", ""], ["prompts=['']", "empty"]),
    (["--prompt", "a cat"], ["'a cat'", "shapes-world grammar"]),  # the compositional reward cannot judge it
    (["--out", "afile"], ["out='afile'", "existing file"]),  # found before sampling, not after
    (["--out", "afile/sub"], ["out='afile/sub'", "is a file"]),
]
STEER_OK = ["--prompt", "two red circles"]  # every steer case but the prompt ones has a valid prompt
GALLERY = [
    (["--steps", "0"], ["--steps", "'0'"]),
    (["steps=0"], ["steps=0", "out of range"]),
    (["--cfg", "-1"], ["--cfg", "'-1'"]),
    (["--size", "33"], ["size=33", "multiple of 4"]),
    (["size=128"], ["size=128", "<= 64"]),
    (["--max-seq", "0"], ["--max-seq", "'0'"]),
    (["--num-prompts", "0"], ["--num-prompts", "'0'"]),  # not silently every prompt
    (["num_prompts=-1"], ["num_prompts=-1"]),
    (["--seeds", "a,b"], ["seeds", "'a,b'"]),
    (["--seeds", "-1"], ["seeds=[-1]"]),
    (["--seeds", ""], ["seeds=[]"]),
    (["--seeds", "0,0"], ["seeds=[0, 0]", "distinct"]),
    (["--method", "fk:particles=0"], ["'fk:particles=0'", "particles=0"]),
    (["--method", "bon:particles=0"], ["'bon:particles=0'", "particles=0"]),
    (["--method", "fk:lambda=-1"], ["'fk:lambda=-1'", "lam=-1"]),
    (["--method", "fk:resample_steps=30-40"], ["'fk:resample_steps=30-40'", "20-step grid"]),
    (["--method", "fk:potential=foo"], ["'fk:potential=foo'", "potential='foo'"]),
    (["--method", "fk:step=ode"], ["'fk:step=ode'", "stochastic"]),
    (["--method", "dts_star:nfe_budget=5"], ["'dts_star:nfe_budget=5'", "nfe_budget=5"]),
    (["--method", "base:cfg=-1"], ["'base:cfg=-1'", "cfg=-1"]),
    (["--method", "base:steps=0"], ["'base:steps=0'", "steps=0"]),
    (["--method", "fk:partcles=2"], ["'fk:partcles=2'", "partcles"]),
    (["--method", "lora:missing_run"], ["'missing_run'", "does not exist"]),
    (["--method", "lora:lora_trunc"], ["lora_trunc"]),  # a truncated LoRA file
    (["--method", "lora:lora_junk"], ["lora_junk"]),  # a LoRA file of another format
    (["--prompt", "a cat"], ["'a cat'", "shapes-world grammar"]),
    (["--reward", "foo"], ["unknown reward 'foo'"]),
    (["--prompts-file", "empty.txt"], ["empty.txt", "no prompts"]),
    (["--prompts-file", "bad_utf8.txt"], ["bad_utf8.txt", "UTF-8"]),
    (["--prompts-file", "bad.jsonl"], ["bad.jsonl", "'prompt'"]),
    (["--model", "missing_model"], ["model='missing_model'", "does not exist"]),
    (["nopreset"], ["unknown preset 'nopreset'"]),
    (["plots=maybe"], ["plots=maybe", "boolean"]),  # bad type
    (["seed=0"], ["unknown config key 'seed'", "seeds"]),  # unknown key
    (["--out", "afile"], ["out='afile'", "existing file"]),
    (["--out", "afile/sub"], ["out='afile/sub'", "is a file"]),
]
TESTBED = [
    (["sample", "two red circles", "--n", "0"], ["--n", "'0'"]),
    (["sample", "two red circles", "n=-2"], ["n=-2", "out of range"]),
    (["sample", "two red circles", "n=abc"], ["'n=abc'"]),
    (["sample", "two red circles", "--scale", "0"], ["--scale", "'0'"]),
    (["sample", "two red circles", "--steps", "0"], ["--steps", "'0'"]),  # not silently 20
    (["sample", "two red circles", "--guidance", "-1"], ["--guidance", "'-1'"]),
    (["sample", "two red circles", "--seed", "-1"], ["--seed", "'-1'"]),
    (["sample", "two red circles", "foo=1"], ["unknown config key 'foo'"]),
    (["sample", "", "-o", "x.png"], ["prompt=''", "empty"]),
    (["sample", "two red circles", "-o", "afile/x.png"], ["output='afile/x.png'", "is a file"]),
    (["sample", "two red circles", "-o", "adir"], ["output='adir'", "existing folder"]),
    (["sample", "two red circles", "-o", "out.txt"], ["output='out.txt'", "image extension"]),
    (["sample", "two red circles", "--assets", "missing_assets"], ["assets='missing_assets'"]),
    (["sample", "two red circles", "--pipeline", "adir"], ["pipeline='adir'", "model_index.json"]),
    (["eval", "--n-prompts", "0"], ["--n-prompts", "'0'"]),
    (["eval", "n_prompts=-1"], ["n_prompts=-1"]),
    (["eval", "--n-real", "0"], ["--n-real", "'0'"]),  # not a crash after 5 minutes of sampling
    (["eval", "cfg=-3"], ["cfg=-3"]),
    (["eval", "n_prompt=3"], ["unknown config key 'n_prompt'", "n_prompts"]),
    (["eval", "--pipeline", "missing_pipe"], ["pipeline='missing_pipe'"]),
    (["foo"], ["'foo'", "sample"]),
]


def cli_cases() -> list:
    out = []
    for table, cmd, extra in (
        (TRAIN, "train", []),
        (STEER, "steer", STEER_OK),
        (GALLERY, "gallery", []),
        (TESTBED, "testbed", []),
    ):
        for argv, needles, *xfail in table:
            given = extra if cmd != "steer" or not {"--prompt", "--prompts-file"} & set(argv) else []
            marks = [pytest.mark.xfail(reason=f"needs {xfail[0]}", strict=False)] if xfail else []
            out.append(pytest.param(cmd, [*argv, *given], needles, marks=marks, id=f"{cmd} {' '.join(argv)}"))
    return out


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working folder with the fixture files; FLOWALIGN_DEBUG off."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLOWALIGN_DEBUG", raising=False)
    make_files(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def no_models(monkeypatch):
    """Loading a model, pipeline or training run fails the case: bad input must be refused first."""
    import flowalign.gallery.run
    import flowalign.models
    import flowalign.steering.job
    import flowalign.testbed.pipeline
    import flowalign.train.run

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded: the bad input was not refused before loading")

    for module, name in (
        (flowalign.models, "load_model"),
        (flowalign.steering.job, "load_model_with_defaults"),
        (flowalign.gallery.run, "load_model_with_defaults"),
        (flowalign.testbed.pipeline, "load_pipeline"),
        (flowalign.train.run, "build_model"),
    ):
        monkeypatch.setattr(module, name, loaded)


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own refusals
        return exc.code


@pytest.mark.parametrize("cmd, argv, needles", cli_cases())
def test_bad_command_line_is_one_error_line_exit_2_nothing_written(cmd, argv, needles, workdir, capsys):
    before = listing(workdir)
    code = run_main([cmd, *argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith(f"flowalign {cmd}"), err
    prog = lines[0].split(": error: ")[0]
    assert prog in (f"flowalign {cmd}", "flowalign testbed sample", "flowalign testbed eval"), lines[0]
    assert ": error: " in lines[0] and "Traceback" not in err and out == ""
    assert all(n in lines[0] for n in needles), (needles, lines[0])
    assert listing(workdir) == before  # no run / output folder, no image, nothing else


# --- the Python API: one ValueError naming the argument ---------------------------------------------------
def _steer_api() -> dict[str, tuple[Callable[[], object], str]]:
    from flowalign.steering import beam_search, best_of_n, fk_steer, steer, tree_search
    from flowalign.steering.config import FKOptions, SteerConfig, SteerMethod, validate
    from flowalign.steering.job import run_steer

    m, r, p = object(), (lambda x: x.mean()), ["two red circles"]  # the model is never touched
    fk = lambda **o: SteerConfig(prompts=p, method=SteerMethod("fk", FKOptions(**o)))  # noqa: E731
    return {
        "steer(method='foo')": (lambda: steer("foo", m, p, r), "unknown steering method 'foo'"),
        "steer(fk, num_particles=0)": (lambda: steer("fk", m, p, r, num_particles=0), "num_particles=0"),
        "fk_steer(num_particles=0)": (lambda: fk_steer(m, p, r, num_particles=0), "num_particles=0"),
        "fk_steer(lam=-1)": (lambda: fk_steer(m, p, r, lam=-1.0), "lam=-1.0"),
        "fk_steer(lam=inf)": (lambda: fk_steer(m, p, r, lam=math.inf), "lam=inf"),
        "fk_steer(potential='foo')": (lambda: fk_steer(m, p, r, potential="foo"), "potential 'foo'"),
        "fk_steer(ess_threshold=2)": (lambda: fk_steer(m, p, r, ess_threshold=2.0), "ess_threshold=2.0"),
        "best_of_n(n=0)": (lambda: best_of_n(m, p, r, n=0, num_steps=4), "n=0"),
        "beam_search(beam_width=0)": (lambda: beam_search(m, p, r, beam_width=0, num_steps=4), "beam_width=0"),
        "tree_search(batch=0)": (lambda: tree_search(m, p, r, nfe_budget=40, batch=0), "batch=0"),
        "tree_search(widen_c=0)": (lambda: tree_search(m, p, r, nfe_budget=40, widen_c=0.0), "widen_c"),
        "steer validate(particles=0)": (lambda: validate(fk(particles=0)), "method.options.particles=0"),
        "steer validate(steps=0)": (lambda: validate(SteerConfig(prompts=p, steps=0)), "steps=0"),
        "run_steer(out=a file)": (lambda: run_steer(SteerConfig(prompts=p, out="afile")), "out='afile'"),
        "run_steer(prompts_file=bad utf-8)": (
            lambda: run_steer(SteerConfig(prompts_file="bad_utf8.txt")),
            "bad_utf8.txt",
        ),
    }


def _gallery_api() -> dict[str, tuple[Callable[[], object], str]]:
    from flowalign.gallery import make_settings, parse_method, run_gallery

    def settings(**kw):
        return make_settings("testbed", ["base"], **{"prompts": ["two red circles"], "seeds": [0], **kw})

    def mutated(**kw):
        s = settings()
        for k, v in kw.items():
            setattr(s, k, v)
        return s

    return {
        "make_settings(steps=0)": (lambda: settings(steps=0), "steps=0"),
        "make_settings(cfg=-1)": (lambda: settings(cfg=-1.0), "cfg=-1.0"),
        "make_settings(size=33)": (lambda: settings(size=33), "size=33"),
        "make_settings(num_prompts=0)": (lambda: settings(num_prompts=0), "num_prompts=0"),
        "make_settings(seeds=[-1])": (lambda: settings(seeds=[-1]), "seeds=[-1]"),
        "make_settings(methods=[fk:particles=0])": (
            lambda: make_settings("testbed", ["fk:particles=0"], prompts=["a red circle"]),
            "particles=0",
        ),
        "make_settings(prompts_file=empty)": (lambda: settings(prompts=None, prompts_file="empty.txt"), "empty.txt"),
        "parse_method('fk:particles=four')": (lambda: parse_method("fk:particles=four"), "particles='four'"),
        "run_gallery(settings.steps=0)": (lambda: run_gallery(mutated(steps=0), "g", progress=False), "steps=0"),
        "run_gallery(out=a file)": (lambda: run_gallery(settings(), "afile", progress=False), "afile"),
    }


def _other_api() -> dict[str, tuple[Callable[[], object], str]]:
    from flowalign.testbed import jobs
    from flowalign.train import apply_overrides, get_preset
    from flowalign.train.checks import validate
    from flowalign.train.data import load_prompts

    def train_cfg(*items):
        return validate(apply_overrides(get_preset("testbed"), list(items)))

    return {
        "load_prompts(empty)": (lambda: load_prompts("empty.txt"), "empty.txt"),
        "load_prompts(non-UTF-8)": (lambda: load_prompts("bad_utf8.txt"), "bad_utf8.txt"),
        "load_prompts(folder)": (lambda: load_prompts("adir"), "adir"),
        "load_prompts(jsonl without prompt)": (lambda: load_prompts("bad.jsonl"), "bad.jsonl"),
        "testbed sample(SampleJob(n=0))": (lambda: jobs.sample(jobs.SampleJob(n=0)), "n=0"),
        "testbed sample(output=.txt)": (lambda: jobs.sample(jobs.SampleJob(output="x.txt")), "output='x.txt'"),
        "testbed evaluate(EvalJob(n_real=0))": (lambda: jobs.evaluate(jobs.EvalJob(n_real=0)), "n_real=0"),
        "train validate(optim.lr=0)": (lambda: train_cfg("optim.lr=0"), "optim.lr=0"),
        "train validate(train.iterations=0)": (lambda: train_cfg("train.iterations=0"), "train.iterations=0"),
    }


API = {**_steer_api(), **_gallery_api(), **_other_api()}


@pytest.mark.parametrize("name", list(API))
def test_bad_api_argument_is_one_value_error(name, workdir):
    call, named = API[name]
    before = listing(workdir)
    with pytest.raises(ValueError) as err:
        call()
    assert named in str(err.value) and "\n" not in str(err.value), str(err.value)
    assert listing(workdir) == before


def test_the_table_covers_every_command():
    counts = {
        cmd: len(t) for cmd, t in (("train", TRAIN), ("steer", STEER), ("gallery", GALLERY), ("testbed", TESTBED))
    }
    assert min(counts.values()) >= 15 and sum(counts.values()) + len(API) >= 60, counts


# --- the benchmarks: bad flags are one argparse error before any work --------------------------------------
BENCHES = Path(__file__).resolve().parents[1] / "benchmarks"
BENCH = [
    ("bench_steering", "parse", ["--ks", ""], "--ks ''"),
    ("bench_steering", "parse", ["--ks", "2,x"], "--ks"),
    ("bench_steering", "parse", ["--beam-ks", "0"], "--beam-ks"),
    ("bench_steering", "parse", ["--dts-widen", "1"], "--dts-widen"),
    ("bench_steering", "parse", ["--fk-potentials", "foo"], "--fk-potentials"),
    ("bench_steering", "parse", ["--reward", "foo"], "--reward 'foo'"),
    ("bench_steering", "parse", ["--plot", "afile/curves.png"], "--plot"),
    ("bench_steering", "parse", ["--seeds", "0"], "--seeds"),
    ("bench_train", "parse_args", ["--minutes", "0"], "--minutes"),
    ("bench_train", "parse_args", ["optim.lr=0"], "optim.lr=0"),
    ("bench_train", "parse_args", ["--preset", "nope"], "unknown preset 'nope'"),
    ("bench_artifact_reg", "parse_args", ["--out", "afile"], "--out='afile'"),
    ("bench_artifact_reg", "parse_args", ["sample.num_step=3"], "sample.num_step"),
    ("bench_testbed", "main", ["--n-real", "0"], "--n-real"),
    ("bench_testbed", "main", ["--assets", "missing_assets"], "missing_assets"),
]


@pytest.mark.parametrize("module, fn, argv, named", BENCH, ids=[f"{m} {' '.join(a)}" for m, _, a, _ in BENCH])
def test_bad_benchmark_flags_are_one_argparse_error(module, fn, argv, named, workdir, monkeypatch, capsys):
    import importlib

    monkeypatch.syspath_prepend(str(BENCHES))
    before = listing(workdir)
    with pytest.raises(SystemExit) as exc:
        getattr(importlib.import_module(module), fn)(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and ": error: " in err[-1] and named in err[-1], err
    assert listing(workdir) == before


def test_bench_steering_empty_dts_ks_means_no_dts_star(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHES))
    import bench_steering

    bench = bench_steering.parse(["--dts-ks", "", "--beam-ks", ""])
    assert (bench.args.dts_ks, bench.args.beam_ks, bench.args.ks) == ([], [], [2, 4, 8])
