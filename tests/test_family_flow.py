"""The five new families end to end through the trainer, steering and the gallery (issue 22, wiring).

What must hold: through ``resolve_config`` + ``run.main`` one Flow-GRPO iteration with LoRA moves the
adapters of tiny-qwenimage, tiny-qwenimage-edit, tiny-flux2, tiny-flux-kontext and tiny-wan; the editing
families sample with each prompt's source image (an ``image`` column: a .jsonl of files, or a PromptSet
of tensors) and the reward receives it as ``source_images``; Wan trains on 5-frame clips with a video
reward (temporal consistency + an image reward lifted to frames). ``flowalign steer`` (FK) and a 2 x 2
gallery run for every family; the Wan gallery writes MP4 clips that headless Chromium plays. Bad input
is one clear ValueError each.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from flowalign.models import MODELS

PROMPTS = ["two red circles", "a blue square"]
RES = {"qwenimage": 32, "qwenimage_edit": 32, "flux2": 16, "flux_kontext": 16, "wan": 32}
NAME = {f: "tiny-" + f.replace("_", "-") for f in RES}
EDIT = ("qwenimage_edit", "flux_kontext")
TRAIN = ["model.lora_rank=4", "model.lora_alpha=8", "sample.num_steps=2", "sample.group_size=2"]
TRAIN += ["sample.groups_per_iteration=2", "sample.batch_size=4", "optim.steps_per_iteration=1", "eval.every=0"]
TRAIN += ["train.ema=false", "train.iterations=1", "train.save_every=0", "log.progress=false"]
TRAIN += ["sample.guidance_scale=2", "sample.window.kind=all", "data.eval=null"]


@pytest.fixture(autouse=True)
def _tiny_flux2(monkeypatch):
    """``load_model('tiny-flux2')`` as registered, or (while its factory's module import is shadowed by
    the same-named function in ``flowalign.models``) the same Klein model built from the module."""
    import importlib

    from flowalign.models.flux2 import Flux2Model

    def build(seed: int = 0, **kw):
        try:
            return original(seed=seed, **kw)
        except AttributeError:
            kw.setdefault("max_sequence_length", 32)
            module = importlib.import_module("flowalign.models.tiny_flux2")
            return Flux2Model(module.tiny_flux2_klein_pipeline(seed=seed), **kw)

    original = MODELS["tiny-flux2"]
    monkeypatch.setitem(MODELS, "tiny-flux2", build)


def _sources(tmp_path, res: int, n: int = 2) -> list:
    """n source images as PNG files next to a prompts .jsonl (relative paths): the jsonl's path."""
    lines = []
    for i in range(n):
        arr = (np.random.RandomState(i).rand(res, res, 3) * 255).astype("uint8")
        Image.fromarray(arr).save(tmp_path / f"src{i}.png")
        lines.append(json.dumps({"prompt": PROMPTS[i], "image": f"src{i}.png"}))
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "prompts.jsonl"


def _config(family: str, tmp_path, *extra: str):
    from flowalign.train.run import resolve_config

    seq = 16 if family == "wan" else 32
    items = [f"model.path={NAME[family]}", f"model.resolution={RES[family]}", f"model.max_sequence_length={seq}"]
    return resolve_config(None, [*items, *TRAIN, f"train.output_dir={tmp_path / 'run'}", *extra], None)[0]


def _lora_moved(model) -> bool:
    """peft's gaussian init has lora_B = 0: any non-zero lora_B was moved by the optimizer."""
    return any(float(p.detach().abs().sum()) > 0 for n, p in model.transformer.named_parameters() if "lora_B" in n)


@pytest.mark.parametrize("family", ["qwenimage", "qwenimage_edit", "flux2", "flux_kontext"])
def test_one_flow_grpo_iteration_per_image_family(family, tmp_path):
    from flowalign.train.data import PromptSet, load_prompts
    from flowalign.train.run import main

    res, seen = RES[family], {}
    prompts = PromptSet(list(PROMPTS), [{} for _ in PROMPTS])
    if family == "flux_kontext":  # a .jsonl with an image column of files (resized when loaded)
        prompts = load_prompts(_sources(tmp_path, 24))
    elif family == "qwenimage_edit":  # in-memory sources at the resolution
        prompts = PromptSet(list(PROMPTS), [{"image": torch.rand(3, res, res)} for _ in PROMPTS])

    def reward(images, texts, **meta):
        seen.update(meta, shape=tuple(images.shape))
        return images.flatten(1).mean(1) + 0.1 * torch.arange(len(texts))

    res_ = main(_config(family, tmp_path), reward_fn=reward, prompts=prompts)
    assert seen["shape"] == (4, 3, res, res)
    assert res_.history[0]["train/ratio_max"] == res_.history[0]["train/ratio_min"] == 1.0  # on-policy
    assert _lora_moved(res_.model)
    if family in EDIT:
        assert tuple(seen["source_images"].shape) == (4, 3, res, res)
    else:
        assert "source_images" not in seen


def test_wan_trains_on_clips_with_a_video_reward(tmp_path):
    from flowalign.train.run import main

    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    weights = 'reward.weights={"temporal_consistency": 1.0, "testbed_aesthetic": 0.1}'  # the image reward: lifted
    cfg = _config("wan", tmp_path, "model.num_frames=5", weights, f"data.train={tmp_path / 'prompts.txt'}")
    res = main(cfg)
    assert res.model.num_frames == 5 and _lora_moved(res.model)
    assert any(".attn1.to_q.lora_B" in n for n, _ in res.model.transformer.named_parameters())  # WAN targets
    assert res.history[0]["train/ratio_max"] == 1.0


@pytest.mark.parametrize("family", list(RES))
def test_fk_steering_job_per_family(family, tmp_path):
    from flowalign.steering.config import FKOptions, SteerConfig, SteerMethod
    from flowalign.steering.job import run_steer

    kw = {"prompts": list(PROMPTS)}
    if family in EDIT:
        kw = {"prompts_file": str(_sources(tmp_path, RES[family]))}
    method = SteerMethod("fk", FKOptions(particles=2, resample_steps="1"))
    cfg = SteerConfig(
        model=NAME[family],
        reward="testbed_aesthetic",
        method=method,
        steps=3,
        cfg=2.0,
        size=RES[family],
        num_frames=5 if family == "wan" else None,
        out=str(tmp_path / "steer"),
        **kw,
    )
    report = run_steer(cfg)
    suffix = ".mp4" if family == "wan" else ".png"
    assert len(report["images"]) == 2 and all(f.endswith(suffix) for f in report["images"])
    assert all((tmp_path / "steer" / f).stat().st_size > 0 for f in report["images"])
    assert report["nfe"] >= 2 * 2 * 3 and all(np.isfinite(report["rewards"]))


def _gallery(family: str, tmp_path, methods=("base", "fk:particles=2,resample_steps=1")):
    from flowalign.gallery.config import make_settings
    from flowalign.gallery.run import run_gallery

    kw = {"prompts": list(PROMPTS)}
    if family in EDIT:
        kw = {"prompts_file": str(_sources(tmp_path, RES[family]))}
    settings = make_settings(
        NAME[family],
        list(methods),
        seeds=[0, 1],
        rewards=["testbed_aesthetic", "testbed_artifact"],
        steps=3,
        cfg=2.0,
        size=RES[family],
        num_frames=5 if family == "wan" else None,
        **kw,
    )
    return run_gallery(settings, tmp_path / "gallery", plots=family == "wan", progress=False)


@pytest.mark.parametrize("family", ["qwenimage", "qwenimage_edit", "flux2", "flux_kontext"])
def test_gallery_per_image_family(family, tmp_path):
    res = _gallery(family, tmp_path)
    assert not res.unavailable and res.generated == 2 * 2 * 2
    for row in res.rows:
        assert row["image"].endswith(".png") and (res.out / row["image"]).is_file()
        assert all(np.isfinite(v) for v in row["rewards"].values())
    assert "<img src='images/p000_s0_base.png'" in (res.out / "index.html").read_text()


@pytest.fixture(scope="module")
def wan_gallery(tmp_path_factory):
    return _gallery("wan", tmp_path_factory.mktemp("wan"))


def test_wan_gallery_writes_mp4_clips(wan_gallery):
    import av

    res = wan_gallery
    assert not res.unavailable and res.generated == 8
    for row in res.rows:
        assert row["image"].startswith("videos/") and row["image"].endswith(".mp4")
        with av.open(str(res.out / row["image"])) as clip:
            frames = list(clip.decode(video=0))
        assert len(frames) == 5 and (frames[0].width, frames[0].height) == (32, 32)
    page = (res.out / "index.html").read_text()
    assert page.count("<video src='videos/") == 8


def test_wan_gallery_plays_in_headless_chromium(wan_gallery):
    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.add_argument("--allow-file-access-from-files")
    opts.add_argument("--autoplay-policy=no-user-gesture-required")
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver_bin), options=opts)
    state = "return Array.from(document.querySelectorAll('video'))"
    state += ".map(v => [v.getAttribute('src'), v.readyState, v.error && v.error.code])"
    try:
        driver.get((wan_gallery.out / "index.html").as_uri())
        WebDriverWait(driver, 60).until(lambda d: all(r >= 2 or e for _, r, e in d.execute_script(state)))
        videos = driver.execute_script(state)
        assert len(videos) == 8 and all(r >= 2 and e is None for _, r, e in videos), videos  # loaded, none broken
        size = driver.execute_script("const v=document.querySelector('video');return [v.videoWidth, v.videoHeight]")
        assert size == [32, 32]
        images = driver.execute_script("return Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
        assert images and all(images)  # the plots
    finally:
        driver.quit()


# --- bad input: one clear error each ----------------------------------------------------------------
def test_wan_frames_not_4k_plus_1(tmp_path):
    from flowalign.train.run import main

    with pytest.raises(ValueError, match=r"model\.num_frames=6 .*4k\+1.* 5 and 9"):
        main(_config("wan", tmp_path, "model.num_frames=6"), reward_fn=lambda im, p, **m: im.mean((1, 2, 3, 4)))
    with pytest.raises(ValueError, match=r"model\.num_frames=5 makes videos.*'qwenimage' makes images"):
        main(_config("qwenimage", tmp_path, "model.num_frames=5"), reward_fn=lambda im, p, **m: im.mean((1, 2, 3)))


def test_editing_model_without_a_source_column(tmp_path):
    from flowalign.train.data import PromptSet
    from flowalign.train.run import main

    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    cfg = _config(
        "flux_kontext", tmp_path, f"data.train={tmp_path / 'prompts.txt'}", "reward.weights.testbed_aesthetic=1"
    )
    with pytest.raises(ValueError, match=r"'flux_kontext' edits a source image.*no 'image' column"):
        main(cfg)  # the start-up check, before the model loads
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=r"'qwenimage_edit' edits a source image.*'image' column"):
        main(
            _config("qwenimage_edit", tmp_path),
            reward_fn=lambda im, p, **m: im.mean((1, 2, 3)),
            prompts=PromptSet(list(PROMPTS), [{} for _ in PROMPTS]),
        )


def test_source_image_of_another_size(tmp_path):
    from flowalign.train.data import PromptSet
    from flowalign.train.run import main

    prompts = PromptSet(list(PROMPTS), [{"image": torch.rand(3, 16, 16)}, {"image": torch.rand(3, 24, 24)}])
    with pytest.raises(ValueError, match=r"source image of prompt 1 .* is 24x24 .* model\.resolution=16"):
        main(_config("flux_kontext", tmp_path), reward_fn=lambda im, p, **m: im.mean((1, 2, 3)), prompts=prompts)


def test_resolution_not_divisible_by_the_family_factor(tmp_path):
    from flowalign.train.run import main

    with pytest.raises(ValueError, match=r"model\.resolution=24 does not fit QwenImageModel: .*multiple of 16"):
        main(_config("qwenimage", tmp_path, "model.resolution=24"), reward_fn=lambda im, p, **m: im.mean((1, 2, 3)))
    with pytest.raises(ValueError, match=r"model\.resolution=40 does not fit WanModel: .*multiple of 16"):
        main(_config("wan", tmp_path, "model.resolution=40", "model.num_frames=5"), reward_fn=lambda *a, **k: 0)


def test_xformers_attention_on_cpu(tmp_path):
    from flowalign.train.run import main

    cfg = _config("qwenimage", tmp_path, "model.attention=xformers", "train.cpu=true")
    with pytest.raises(ValueError, match=r"model\.attention.*xformers.*(CPU|CUDA).*model\.attention=sdpa"):
        main(cfg, reward_fn=lambda im, p, **m: im.mean((1, 2, 3)))
    with pytest.raises(ValueError, match=r"model\.attention='flash' is unknown"):
        main(_config("qwenimage", tmp_path, "model.attention=flash"), reward_fn=lambda *a, **k: 0)
