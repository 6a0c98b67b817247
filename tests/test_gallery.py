"""``flowalign gallery`` on the tiny offline SD3 pipeline with hand-checkable rewards (mean of a colour
channel): method specs, numbers read back from the PNGs, summary arithmetic, resume after an
interruption, determinism, unavailable methods, bad input, and the HTML rendered in headless Chromium."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowalign.rewards.base import Reward

PROMPTS = ["two red circles", "a blue square"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


class Redness(Reward):  # mean of the red channel: recomputable from the saved PNG
    name, differentiable = "redness", False

    def score(self, images, prompts, **metadata):
        return images[:, 0].mean((1, 2))


class Blueness(Reward):
    name, differentiable = "blueness", True

    def score(self, images, prompts, **metadata):
        return images[:, 2].mean((1, 2))


class Target(Reward):  # echoes the prompt file's 'target' column: metadata reaches the rewards
    name, differentiable = "target", False

    def score(self, images, prompts, target=None, **metadata):
        return torch.tensor(target, dtype=torch.float32)


@pytest.fixture(scope="module", autouse=True)
def test_rewards():
    from flowalign.rewards import REWARDS

    REWARDS.update(redness=Redness, blueness=Blueness, target=Target)
    yield
    for k in ("redness", "blueness", "target"):
        REWARDS.pop(k, None)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run as `flowalign train` leaves it: checkpoints/checkpoint-000002/{lora/, state.json}
    with a random (non-zero) LoRA on the tiny SD3 transformer, and tensorboard scalars in tb/."""
    from peft import LoraConfig
    from torch.utils.tensorboard import SummaryWriter

    from flowalign.models.tiny import tiny_sd3_pipeline
    from flowalign.train.checkpoint import export_lora

    run = tmp_path_factory.mktemp("train") / "run"
    ckpt = run / "checkpoints" / "checkpoint-000002"
    (ckpt / "lora").mkdir(parents=True)
    pipe = tiny_sd3_pipeline(seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe.transformer.add_adapter(
            LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        )
    export_lora(type(pipe), pipe.transformer, ckpt / "lora")
    (ckpt / "state.json").write_text(json.dumps({"iteration": 2, "scalars": {}, "parts": {}}))
    writer = SummaryWriter(str(run / "tb"))
    for step, value in enumerate([0.25, 0.5, 0.75]):
        writer.add_scalar("eval/accuracy", value, step)
        writer.add_scalar("reward/total_mean", 1 - value, step)
    writer.close()
    return run


def make(run_dir, methods=None, **kw):
    from flowalign.gallery import make_settings

    methods = methods or [
        "base",
        f"lora:{run_dir}/checkpoints/last",
        "fk:particles=2,lambda=5",
        "fk:reward_grad_scale=1,label=fkgrad",
    ]
    kw = {"prompts": PROMPTS, "seeds": [0, 1], "rewards": ["redness", "blueness"], "steps": 4, **kw}
    return make_settings("tiny-sd3", methods, **kw)


@pytest.fixture(scope="module")
def gallery(run_dir, tmp_path_factory):
    from flowalign.gallery import run_gallery

    out = tmp_path_factory.mktemp("gallery") / "g"
    return run_gallery(make(run_dir), out, progress=False)


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "seconds"}


# --- specs ---------------------------------------------------------------------------------------------
def test_method_specs_parse_into_dataclasses_and_steer_kwargs():
    from flowalign.gallery import check_steering, parse_method, parse_methods, steering_kwargs

    fk = parse_method("fk:particles=4,potential=max,lambda=10,resample_steps=3,6,9")
    assert (fk.kind, fk.label, fk.lora) == ("fk", "fk", None)
    assert fk.options == {"particles": 4, "potential": "max", "lambda": 10, "resample_steps": "3,6,9"}
    kwargs, particles = steering_kwargs(fk)  # flowalign steer's method_kwargs: same names and defaults
    assert kwargs == {"num_particles": 4, "lam": 10, "potential": "max", "resample_steps": [3, 6, 9]} and particles == 4
    win = parse_method("fk:potential=rt,resample_steps=7-9,noise_steps=6-8,10")  # ranges stay one item each
    assert win.options == {"potential": "rt", "resample_steps": "7-9", "noise_steps": "6-8,10"}
    assert steering_kwargs(win)[0] == {
        "num_particles": 4,
        "lam": 10.0,
        "potential": "rt",
        "resample_steps": [7, 8, 9],
        "noise_steps": [6, 7, 8, 10],
    }
    lora = parse_method("lora:/runs/a,b/checkpoints/last,label=tuned,steps=8")
    assert (lora.kind, lora.lora, lora.label) == ("lora", "/runs/a,b/checkpoints/last", "tuned")
    assert lora.options == {"steps": 8}
    assert [m.label for m in parse_methods(["fk", "fk:particles=8", "base", "bon:label=fk-2x"])] == [
        "fk",
        "fk-2",
        "base",
        "fk-2x",
    ]
    hint = "e.g. --method base, --method lora:RUN/checkpoints/last or --method fk:particles=4,potential=max,lambda=10"
    bad = {
        "flow:x=1": f"method spec 'flow:x=1': unknown method 'flow'; choose one of ['base', 'lora', 'fk', 'bon', "
        f"'beam', 'svdd', 'dts', 'dts_star', 'fmtt', 'das', 'noise_search'], {hint}.",
        "fk:particles": f"method spec 'fk:particles': 'particles' is not key=value; {hint}.",
        "lora": "method spec 'lora': lora needs a checkpoint, e.g. lora:runs/testbed/checkpoints/last.",
        "base:particles=4": "method spec 'base:particles=4': unknown option(s) ['particles'] for base; allowed: "
        "['label', 'steps', 'cfg', 'negative_prompt'].",
        "base:steps=0": "method spec 'base:steps=0': steps=0 must be an int >= 1.",
        "fk:particles=four": "method spec 'fk:particles=four': particles='four' must be an int.",
    }
    for spec, message in bad.items():
        with pytest.raises(ValueError) as err:
            parse_method(spec)
        assert str(err.value) == message
    for clash in (["fk:label=a", "bon:label=a"], ["fk", "bon:label=fk"], ["fk:label=a b", "bon:label=a-b"]):
        with pytest.raises(ValueError, match=r"share a label \(or its file name\); give each a unique label"):
            parse_methods(clash)
    with pytest.raises(ValueError, match=r"fk takes no option\(s\) \['bogus'\]"):
        check_steering(parse_method("fk:bogus=1"))
    with pytest.raises(ValueError, match=r"fk takes no option\(s\) \['num_steps'\]"):
        check_steering(parse_method("fk:num_steps=3"))


def test_summary_arithmetic_by_hand():
    from flowalign.gallery import format_table, summarize

    rows = [{"method": "m", "rewards": {"r": v}, "nfe": n, "seconds": 1.0} for v, n in ((0.2, 4), (0.4, 4), (0.9, 10))]
    s = summarize(rows, ["m", "x"], ["r"], {"x": "no"})
    # mean (0.2 + 0.4 + 0.9) / 3 = 0.5; sample std sqrt((0.09 + 0.01 + 0.16) / 2) = sqrt(0.13) = 0.36056
    assert s["m"]["rewards"]["r"] == pytest.approx([0.5, math.sqrt(0.13)]) and s["m"]["n"] == 3
    assert s["m"]["nfe"] == pytest.approx(6.0) and s["x"] == {"n": 0, "unavailable": "no"}
    assert format_table(s, ["r"]).splitlines()[2:] == [
        "| m | 3 | 0.500 ± 0.361 | 6 | 1.00 |",
        "| x | 0 | unavailable: no | | |",
    ]


# --- a full tiny gallery ----------------------------------------------------------------------------------
def test_gallery_rows_match_the_pngs_and_the_summary(gallery, run_dir):
    from flowalign.gallery import read_scalars

    out = gallery.out
    rows = rows_of(out)
    assert len(rows) == gallery.generated == 2 * 2 * 3  # prompts x seeds x runnable methods
    assert gallery.unavailable == {
        "fkgrad": "the gradient proposal (reward_grad_scale>0) needs a differentiable reward; 'redness' is not"
    }
    for r in rows:  # the reward is the mean red / blue channel of the saved 8-bit PNG
        px = np.asarray(Image.open(out / r["image"]), dtype=np.float64) / 255
        assert r["rewards"]["redness"] == pytest.approx(px[..., 0].mean(), abs=1e-6)
        assert r["rewards"]["blueness"] == pytest.approx(px[..., 2].mean(), abs=1e-6)
        assert r["nfe"] == {"base": 4, "lora": 4, "fk": 2 * 4}[r["method"]]  # steps x particles (CFG counted once)
    for m in ("base", "lora", "fk"):
        vals = [r["rewards"]["redness"] for r in rows if r["method"] == m]
        expected = [statistics.mean(vals), statistics.stdev(vals)]
        assert gallery.summary[m]["rewards"]["redness"] == pytest.approx(expected)
    assert "| fkgrad | 0 | unavailable: the gradient proposal" in gallery.table
    base = {(r["prompt_index"], r["seed"]): (out / r["image"]).read_bytes() for r in rows if r["method"] == "base"}
    lora = {(r["prompt_index"], r["seed"]): (out / r["image"]).read_bytes() for r in rows if r["method"] == "lora"}
    assert all(base[k] != lora[k] for k in base)  # the LoRA was applied
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "prompt_index,prompt,seed,method,redness,blueness,nfe,seconds,image" and len(csv_lines) == 13
    assert read_scalars(run_dir / "tb")["eval/accuracy"] == [(0, 0.25), (1, 0.5), (2, 0.75)]
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots == ["reward_vs_nfe.png", "rewards.png", "training_lora.png"]


def test_interrupted_run_resumes_without_redoing_images_and_matches(gallery, run_dir, tmp_path):
    from flowalign.gallery import run_gallery

    out, seen = tmp_path / "g", []

    def stop_after_5(row):
        seen.append(row["key"])
        if len(seen) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_gallery(make(run_dir), out, progress=False, on_image=stop_after_5)
    assert len(rows_of(out)) == 5 and not (out / "index.html").exists()
    first = {k: (out / "images" / f"{k}.png").stat().st_mtime_ns for k in seen}
    with open(out / "results.jsonl", "ab") as f:  # a run killed in the middle of writing a row
        f.write(b'{"key": "p001_s1_fk", "prom')
    again = []
    res = run_gallery(make(run_dir), out, progress=False, plots=False, on_image=lambda r: again.append(r["key"]))
    assert res.generated == len(again) == 12 - 5 and not set(again) & set(seen)
    assert {k: (out / "images" / f"{k}.png").stat().st_mtime_ns for k in seen} == first  # not regenerated
    # same results as the uninterrupted run in another folder: same rows, byte-identical images
    assert [strip(r) for r in res.rows] == [strip(r) for r in gallery.rows]
    assert all((out / r["image"]).read_bytes() == (gallery.out / r["image"]).read_bytes() for r in res.rows)
    # a third run makes nothing; base drawn after a LoRA was unloaded is the plain base image
    assert run_gallery(make(run_dir), out, progress=False, plots=False).generated == 0
    order = run_gallery(
        make(run_dir, [f"lora:{run_dir}", "base"], seeds=[1]), tmp_path / "o", progress=False, plots=False
    )
    for r in (r for r in order.rows if r["method"] == "base"):
        assert (tmp_path / "o" / r["image"]).read_bytes() == (gallery.out / r["image"]).read_bytes()


def test_full_fine_tune_checkpoint_is_swapped_in_and_out(tmp_path):
    from flowalign.gallery import make_settings, run_gallery
    from flowalign.models.tiny import tiny_sd3_pipeline

    ckpt = tmp_path / "ft" / "checkpoints" / "checkpoint-000001"
    transformer = tiny_sd3_pipeline(seed=0).transformer
    with torch.no_grad():
        transformer.proj_out.weight.mul_(3.0)
    transformer.save_pretrained(str(ckpt / "transformer"))
    (ckpt / "state.json").write_text("{}")
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a red circle", "target": 0.25}) + "\n")
    s = make_settings(
        "tiny-sd3",
        ["base", f"lora:{tmp_path / 'ft'},label=ft", "base"],
        prompts_file=tmp_path / "p.jsonl",
        seeds=[3],
        rewards=["redness", "target"],
        steps=3,
    )
    assert s.checkpoints["ft"].kind == "transformer" and s.checkpoints["ft"].path == str(ckpt / "transformer")
    res = run_gallery(s, tmp_path / "g", progress=False, plots=False)
    png = {r["method"]: (tmp_path / "g" / r["image"]).read_bytes() for r in res.rows}
    assert png["ft"] != png["base"] and png["base-2"] == png["base"]  # swapped in, then back out
    assert [r["rewards"]["target"] for r in res.rows] == [0.25] * 3


def test_unavailable_sd3_only_option_on_flux(tmp_path):
    from flowalign.gallery import make_settings, run_gallery

    s = make_settings(
        "tiny-flux",
        ["base", "base:negative_prompt=blurry,label=neg"],
        prompts=PROMPTS[:1],
        seeds=[0],
        rewards=["redness"],
        steps=2,
    )
    res = run_gallery(s, tmp_path / "f", progress=False, plots=False)
    assert [r["method"] for r in res.rows] == ["base"] and list(res.unavailable) == ["neg"]
    assert res.unavailable["neg"].startswith("negative_prompt= is an SD3 option")
    assert "unavailable" in (tmp_path / "f" / "index.html").read_text()


# --- bad input: one clear error, nothing written ----------------------------------------------------------
def snapshot(folder: Path) -> dict:
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_bad_input_is_one_clear_error_and_nothing_is_overwritten(tmp_path, capsys):
    from flowalign.cli import main
    from flowalign.gallery import make_settings, run_gallery
    from flowalign.rewards import REWARDS

    base = ["gallery", "--model", "tiny-sd3", "--steps", "2", "--seeds", "0", "--no-plots"]
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    cases = {
        (
            "--prompt",
            "a cat",
            "--reward",
            "nope",
        ): f"unknown reward 'nope'; choose one of {sorted(REWARDS)} or give your own as 'package.module:factory'.",
        (
            "--prompt",
            "a cat",
            "--reward",
            "redness",
            "--method",
            f"lora:{tmp_path}/missing",
        ): f"checkpoint '{tmp_path}/missing' does not exist; pass a LoRA folder, a training checkpoint folder "
        f"(RUN/checkpoints/checkpoint-NNNNNN), a run folder or RUN/checkpoints/last.",
        (
            "--prompts-file",
            str(empty),
            "--reward",
            "redness",
        ): f"prompt file '{empty}' holds no prompts; add at least one line.",
    }
    for args, message in cases.items():
        out = tmp_path / "never"
        assert main([*base, *args, "--out", str(out)]) == 2
        assert capsys.readouterr().err.strip() == f"flowalign gallery: error: {message}"
        assert not out.exists()
    out = tmp_path / "made"
    run_gallery(
        make_settings("tiny-sd3", ["base"], prompts=["a cat"], seeds=[0], rewards=["redness"], steps=2),
        out,
        progress=False,
        plots=False,
    )
    before = snapshot(out)
    assert main([*base, "--prompt", "a cat", "--reward", "redness", "--seeds", "0,1", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"flowalign gallery: error: output folder {out} holds another gallery run with different settings (seeds "
        f"differ); nothing was changed. Pass a new --out (e.g. --out {out}-2), or the same settings to resume "
        f"that run."
    )
    assert snapshot(out) == before
    (out / "settings.json").unlink()
    with pytest.raises(ValueError, match="holds results.jsonl but no settings.json"):
        run_gallery(
            make_settings("tiny-sd3", ["base"], prompts=["a cat"], seeds=[0], rewards=["redness"], steps=2),
            out,
            progress=False,
        )


# --- the HTML in a real browser ---------------------------------------------------------------------------
def expected_order(rows: list[dict], reward: str, methods: list[str], descending: bool) -> list[str]:
    """Row keys p<i>_s<seed> sorted by the mean of ``reward`` over ``methods`` (stable on ties)."""
    keys = sorted({(r["prompt_index"], r["seed"]) for r in rows})
    val = {
        k: statistics.mean(
            r["rewards"][reward] for r in rows if (r["prompt_index"], r["seed"]) == k and r["method"] in methods
        )
        for k in keys
    }
    return [f"p{i:03d}_s{s}" for i, s in sorted(keys, key=lambda k: -val[k] if descending else val[k])]


@pytest.mark.timeout(300)  # a stuck browser start fails the test instead of hanging the suite
def test_index_html_in_headless_chromium(gallery):
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1100,1400",
        "--allow-file-access-from-files",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_bin), options=opts)
    rows, url = rows_of(gallery.out), (gallery.out / "index.html").as_uri()

    def order() -> list[str]:
        return driver.execute_script(
            "return Array.from(document.querySelectorAll('#gallery tbody tr')).map(r => r.dataset.key)"
        )

    try:
        driver.get(url)
        # the load event can fire before every <img> has decoded on a busy machine: wait (bounded) until
        # each image is either loaded or failed, then check that none failed
        WebDriverWait(driver, 60).until(
            lambda d: d.execute_script("return Array.from(document.images).every(i => i.complete)")
        )
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0])"
        )
        assert len(images) == 12 + 3 and all(ok for _, ok in images), images  # 12 samples + 3 plots, none broken
        assert order() == ["p000_s0", "p000_s1", "p001_s0", "p001_s1"]  # rows = prompt x seed
        header = driver.find_element(By.CSS_SELECTOR, "#gallery th.sort[data-reward='redness']")
        header.click()
        assert order() == expected_order(rows, "redness", ["base", "lora", "fk"], descending=True)
        header.click()
        assert order() == expected_order(rows, "redness", ["base", "lora", "fk"], descending=False)
        assert driver.execute_script("return location.hash") == "#sort=redness&dir=asc"
        for m in ("base", "lora", "fkgrad"):  # filter: fk only -> sorted by fk's redness
            driver.find_element(By.CSS_SELECTOR, f"#filter input[data-method='{m}']").click()
        assert order() == expected_order(rows, "redness", ["fk"], descending=False)
        assert not driver.find_element(By.CSS_SELECTOR, "#gallery th[data-method='base']").is_displayed()
        assert driver.execute_script("return location.hash") == "#sort=redness&dir=asc&methods=fk"
        driver.get(url + "#sort=blueness&dir=desc&methods=base")  # a linked view
        driver.refresh()
        assert order() == expected_order(rows, "blueness", ["base"], descending=True)
        ARTIFACTS.mkdir(exist_ok=True)
        driver.get(url + "#sort=redness&dir=desc")
        driver.refresh()
        assert driver.save_screenshot(str(ARTIFACTS / "gallery.png"))
    finally:
        driver.quit()
