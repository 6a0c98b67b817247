"""Rewards: the contract, preprocessing, loading from the published file formats, errors,
differentiability, MultiReward arithmetic, background scoring and the artifact-head script.
Every scorer is a tiny random-weight instance of the real class (flowalign.rewards.tiny)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from flowalign.rewards import REWARDS, MultiReward, Reward, RewardWeightsError, load_reward, preprocess, tiny
from flowalign.rewards.background import BackgroundScorer

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
PROMPTS = ["a red circle", "two blue squares left of a cat", "a red circle"]
SCORERS = ["hpsv2", "imagereward", "pickscore", "clip", "aesthetic", "artifact"]


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = tiny.build(name, seed=0)
        return cache[name]

    return get


def rand_images(b=3, h=64, w=80, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# --- preprocessing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(200, 300), (300, 200), (224, 224)])
def test_preprocess_crop_matches_torchvision(hw):
    import torchvision.transforms as T

    x = rand_images(2, *hw)
    tv = T.Compose(
        [
            T.Resize(224, interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.CenterCrop(224),
            T.Normalize(MEAN, STD),
        ]
    )
    assert (preprocess(x, 224, MEAN, STD, "crop") - tv(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("hw", [(200, 300), (301, 150)])
def test_preprocess_pad_matches_resize_max_size(hw):
    """HPS's ResizeMaxSize: longest side -> 224 (rounded), zero padding [pw//2, ph//2, rest] before Normalize."""
    import torchvision.transforms.functional as TF

    x = rand_images(2, *hw)
    h, w = hw
    s = 224 / max(h, w)
    nh, nw = round(h * s), round(w * s)
    y = TF.resize(x, [nh, nw], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    ph, pw = 224 - nh, 224 - nw
    y = TF.normalize(TF.pad(y, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0), MEAN, STD)
    assert (preprocess(x, 224, MEAN, STD, "pad") - y).abs().max() <= 1e-5


def test_preprocess_is_differentiable():
    x = rand_images(1, 32, 32).requires_grad_()
    (g,) = torch.autograd.grad(preprocess(x, 224, MEAN, STD, "crop").sum(), x)
    assert bool((g.abs() > 0).all())  # every input pixel reaches the 224x224 output


# --- the contract ----------------------------------------------------------------------------------
class MeanPixel(Reward):
    name, differentiable, batch_size = "mean_pixel", True, 2

    def __init__(self):
        super().__init__()
        self.seen = []

    def score(self, images, prompts, **metadata):
        self.seen.append(metadata)
        return images.mean(dim=(1, 2, 3)) + metadata.get("bonus", torch.zeros(len(prompts)))


def test_batching_and_metadata_columns_are_split():
    r, x = MeanPixel(), rand_images(5, 8, 8)
    bonus = torch.arange(5.0)
    out = r(x, ["p"] * 5, bonus=bonus)
    assert torch.allclose(out, x.mean(dim=(1, 2, 3)) + bonus)
    assert [len(m["bonus"]) for m in r.seen] == [2, 2, 1]  # 5 rows in chunks of batch_size=2


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda: (torch.rand(2, 4, 8, 8), ["a", "b"]), r"\[B, 3, H, W\]"),
        (lambda: (torch.randint(0, 255, (2, 3, 8, 8)), ["a", "b"]), "dtype"),
        (lambda: (torch.rand(2, 3, 8, 8), ["a"]), "1 prompts for 2 images"),
    ],
)
def test_bad_inputs_are_one_clear_error(bad, match):
    images, prompts = bad()
    with pytest.raises(ValueError, match=match):
        MeanPixel()(images, prompts)


def test_reward_stays_frozen_and_in_eval(built):
    r = built("imagereward")
    r.train()
    assert not r.training and not any(m.training for m in r.modules())
    assert not any(p.requires_grad for p in r.parameters())


@pytest.mark.parametrize("name", SCORERS)
def test_scorers_are_differentiable(built, name):
    r = built(name)
    assert r.differentiable
    x = rand_images(3, 48, 64).requires_grad_()
    s = r(x, PROMPTS)
    assert s.shape == (3,) and s.dtype == torch.float32
    (g,) = torch.autograd.grad(s.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0  # gradient reaches the pixels
    with torch.no_grad():
        assert torch.allclose(r(x, PROMPTS), s.detach(), atol=1e-5)


# --- loading from the published formats / errors ---------------------------------------------------
@pytest.mark.parametrize(
    "name, files",
    [
        ("hpsv2", ["HPS_v2.1_compressed.pt"]),
        ("imagereward", ["ImageReward.pt", "med_config.json", "vocab.txt"]),
        ("pickscore", ["config.json", "preprocessor_config.json"]),
        ("clip", ["open_clip_pytorch_model.bin"]),
        ("aesthetic", ["sac+logos+ava1-l14-linearMSE.pth"]),
        ("artifact", ["artifact_head.safetensors"]),
    ],
)
def test_missing_weights_list_the_expected_files(name, files):
    with pytest.raises(RewardWeightsError) as e:
        load_reward(name)
    msg = str(e.value)
    assert all(f in msg for f in files) and "How to supply them" in msg and "never downloads" in msg


def test_wrong_weights_are_one_clear_error(tmp_path, built):
    from safetensors.torch import save_file

    (tmp_path / "HPS_v2.1_compressed.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RewardWeightsError, match="cannot read"):
        load_reward("hpsv2", path=tmp_path, arch=tiny.register_open_clip())
    with pytest.raises(RewardWeightsError, match="lacks the expected files"):
        load_reward("imagereward", path=tmp_path)
    # a checkpoint of another architecture: shape mismatches are named
    torch.save({"state_dict": built("clip").features.model.state_dict()}, tmp_path / "HPS_v2.1_compressed.pt")
    other = tiny.register_open_clip(
        "flowalign-tiny-clip-wide",
        json.dumps({**tiny.TINY_OPEN_CLIP_CFG, "vision_cfg": {**tiny.TINY_OPEN_CLIP_CFG["vision_cfg"], "width": 96}}),
    )
    with pytest.raises(RewardWeightsError, match="shape mismatches"):
        load_reward("hpsv2", path=tmp_path, arch=other)
    save_file({"w": torch.zeros(2)}, tmp_path / "artifact_head.safetensors")
    with pytest.raises(RewardWeightsError, match="not an artifact head"):
        load_reward("artifact", path=tmp_path, clip="unused")
    with pytest.raises(ValueError, match="unknown reward"):
        load_reward("hps")


def test_clip_and_aesthetic_load_open_clip_checkpoints(tmp_path, built):
    import open_clip
    from safetensors.torch import save_file

    arch = tiny.register_open_clip()
    model = tiny.build("clip", seed=3).features.model
    ckpt = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ckpt)
    x = rand_images(3, 224, 224)
    with torch.no_grad():
        img = F.normalize(model.encode_image(preprocess(x, 224, MEAN, STD)), dim=-1)
        txt = F.normalize(model.encode_text(open_clip.get_tokenizer(arch)(PROMPTS)), dim=-1)
        clip = load_reward("clip", path=ckpt, arch=arch)
        assert torch.allclose(clip(x, PROMPTS), (img * txt).sum(-1), atol=1e-5)
        head = tiny.build("aesthetic", seed=4).head  # the LAION file stores the head as layers.N.*
        torch.save(
            {f"layers.{k}": v for k, v in head.state_dict().items()}, tmp_path / "sac+logos+ava1-l14-linearMSE.pth"
        )
        aes = load_reward("aesthetic", path=tmp_path, arch=arch)  # finds the CLIP checkpoint beside the head
        assert torch.allclose(aes(x, PROMPTS), head(img).squeeze(-1), atol=1e-5)
    with pytest.raises(RewardWeightsError, match="cannot load"):
        load_reward("clip", path=ckpt, arch="flowalign-tiny-clip-wide")


def test_pickscore_matches_transformers_pipeline(tmp_path):
    """Our torch preprocessing + score vs CLIPProcessor + CLIPModel.logits_per_image on a 224px image."""
    model, proc = tiny.clip_model()
    model.save_pretrained(tmp_path / "model")
    proc.save_pretrained(tmp_path / "proc")
    r = load_reward("pickscore", path=tmp_path / "model", processor=tmp_path / "proc")
    x = rand_images(2, 224, 224)
    inputs = proc(
        text=PROMPTS[:2],
        images=list(x.permute(0, 2, 3, 1).numpy()),
        do_rescale=False,
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        want = model(**inputs).logits_per_image.diagonal()  # logit_scale.exp() * cos
        assert torch.allclose(r(x, PROMPTS[:2]), want, atol=1e-4)


# --- MultiReward -----------------------------------------------------------------------------------
class Const(Reward):
    name, differentiable = "const", False

    def __init__(self, *batches):
        super().__init__()
        self.batches = [torch.tensor(b, dtype=torch.float32) for b in batches]

    def score(self, images, prompts, **metadata):
        return self.batches.pop(0)


def multi(a, b, **kw):
    return MultiReward({"a": 2.0, "b": -1.0}, rewards={"a": Const(*a), "b": Const(*b)}, **kw)


def test_multi_reward_weighted_sum():
    s = multi([[1, 2, 3]], [[0.5, 0.5, 1.5]])(torch.zeros(3, 3, 4, 4), "p")
    assert torch.allclose(s.total, torch.tensor([1.5, 3.5, 4.5]))  # 2a - b
    assert torch.equal(s.components["a"], torch.tensor([1.0, 2, 3])) and bool(s.valid.all())


def test_multi_reward_batch_and_running_normalisation():
    z = math.sqrt(1.5)  # [1,2,3]: mean 2, population std sqrt(2/3) -> z = +-1/sqrt(2/3) = +-1.2247
    s = multi([[1, 2, 3]], [[5, 5, 5]], normalize="batch")(torch.zeros(3, 3, 4, 4), "p")
    assert torch.allclose(s.total, torch.tensor([-2 * z, 0, 2 * z]), atol=1e-5)  # b constant -> z_b = 0
    m = multi([[1, 3], [5]], [[0, 0], [0]], normalize="running")
    first = m(torch.zeros(2, 3, 4, 4), "p")  # a: mean 2, std 1 -> z = [-1, 1]
    assert torch.allclose(first.total, torch.tensor([-2.0, 2.0]), atol=1e-5)
    second = m(torch.zeros(1, 3, 4, 4), "p")  # {1,3,5}: mean 3, M2 = 8, std sqrt(8/3) -> z = 2/1.633 = 1.2247
    assert torch.allclose(second.total, torch.tensor([2 * z]), atol=1e-5)


def test_multi_reward_masks_nan_and_inf():
    m = multi([[1, float("nan"), 3]], [[1, 1, float("inf")]], normalize="batch")
    with pytest.warns(RuntimeWarning, match="NaN/inf"):
        s = m(torch.zeros(3, 3, 4, 4), "p")
    assert s.valid.tolist() == [True, False, False]
    assert math.isfinite(float(s.total[0])) and bool(s.total[1:].isnan().all())
    assert s.total[0] == 0  # one valid row: its z-score is 0, the NaN/inf never entered the statistics
    assert m.num_invalid == {"a": 1, "b": 1}
    assert m.log_stats(s)["reward/invalid"] == 2


def test_multi_reward_total_keeps_the_graph():
    m = MultiReward({"px": 3.0}, rewards={"px": MeanPixel()})
    x = rand_images(2, 8, 8).requires_grad_()
    s = m(x, "p")
    (g,) = torch.autograd.grad(s.total.sum(), x)
    assert torch.allclose(g, torch.full_like(x, 3.0 / (3 * 8 * 8)))  # d(3 * mean)/dx
    assert not s.components["px"].requires_grad


# --- background scoring ----------------------------------------------------------------------------
class Slow(MeanPixel):
    def score(self, images, prompts, **metadata):
        time.sleep(0.4)
        return images.mean(dim=(1, 2, 3))


def test_background_scoring_overlaps_and_matches():
    x = rand_images(2, 8, 8)
    with BackgroundScorer(Slow()) as bg:
        t0 = time.perf_counter()
        fut = bg.submit(x, ["p", "q"])
        time.sleep(0.4)  # "sampling the next batch"
        out = fut.result()
        elapsed = time.perf_counter() - t0
    assert torch.allclose(out, x.mean(dim=(1, 2, 3)))
    assert elapsed < 0.7  # sequential would take >= 0.8 s


# --- registry, import cost, artifact script ----------------------------------------------------------
def test_registry_and_light_import():
    assert set(SCORERS) | {"compositional", "testbed_aesthetic", "testbed_artifact"} <= set(REWARDS)
    code = "import sys, flowalign.rewards; print(sorted({'open_clip', 'transformers', 'timm'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert out.stdout.strip() == "[]", out.stderr


def _scene(g, artifact: bool) -> torch.Tensor:
    """A smooth 64x64 image (two colour gradients); artifacts = a strong 2-px checkerboard + noise."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    c0, c1 = torch.rand(3, 1, 1, generator=g), torch.rand(3, 1, 1, generator=g)
    img = c0 * xx + c1 * (1 - yy)
    if artifact:
        checker = ((torch.arange(64)[:, None] // 2 + torch.arange(64)[None] // 2) % 2).float()
        img = img + 0.6 * (checker - 0.5) + 0.3 * torch.randn(3, 64, 64, generator=g)
    return img.clamp(0, 1)


def test_train_artifact_reward_script(tmp_path):
    import importlib.util

    from PIL import Image
    from safetensors.torch import save_file
    from torchvision.transforms.functional import to_pil_image

    g = torch.Generator().manual_seed(0)
    for kind in ("clean", "artifact"):
        (tmp_path / kind).mkdir()
        for i in range(24):
            to_pil_image(_scene(g, kind == "artifact")).save(tmp_path / kind / f"{i}.png")
    arch = tiny.register_open_clip()
    model = tiny.build("clip", seed=5).features.model
    ckpt = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, ckpt)
    path = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "train_artifact_reward.py"
    )
    spec = importlib.util.spec_from_file_location("train_artifact_reward", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "artifact_head.safetensors"
    res = script.main(
        [
            "--data",
            str(tmp_path),
            "--clip",
            str(ckpt),
            "--arch",
            arch,
            "--out",
            str(out),
            "--hidden",
            "32",
            "--epochs",
            "200",
            "--load-size",
            "64",
        ]
    )
    assert res["val_acc"] >= 0.8 and res["train_acc"] >= 0.9
    r = load_reward("artifact", path=out, clip=ckpt)  # arch read from the head's metadata
    clean = torch.stack([_scene(g, False) for _ in range(8)])
    bad = torch.stack([_scene(g, True) for _ in range(8)])
    with torch.no_grad():
        assert r(clean, "x").mean() > r(bad, "x").mean() + 0.2  # 1 - p(artifact): clean images score higher
    assert Image.open(tmp_path / "clean" / "0.png").size == (64, 64)


# --- testbed scorers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def testbed_assets(tmp_path_factory):
    from flowalign.testbed.scorers import SCORERS as TB
    from flowalign.testbed.scorers import save_scorer

    root = tmp_path_factory.mktemp("testbed")
    torch.manual_seed(0)
    models = {name: cls() for name, cls in TB.items()}
    for m in models.values():
        save_scorer(m, root / "scorers")
    return root, {k: m.eval() for k, m in models.items()}


TB_PROMPTS = ["a red circle", "two blue squares", "a red circle left of a blue square"]


def test_testbed_rewards_wrap_the_scorers(testbed_assets):
    root, models = testbed_assets
    x = rand_images(3, 32, 32).requires_grad_()
    with torch.no_grad():
        ref = models["checker"](x, TB_PROMPTS)
        assert torch.equal(load_reward("compositional", path=root)(x, TB_PROMPTS), ref.fraction)
        assert torch.equal(
            load_reward("compositional", path=root, output="strict")(x, TB_PROMPTS), ref.all_correct.float()
        )
        details = load_reward("compositional", path=root).details(x, TB_PROMPTS)
        assert torch.equal(details["all_correct"], ref.all_correct) and details["clause_mask"].sum() == 3 + 3 + 7
        p_art = models["artifact"](x)
        assert torch.allclose(load_reward("testbed_artifact", path=root)(x, TB_PROMPTS), 1 - p_art, atol=1e-6)
        assert torch.allclose(
            load_reward("testbed_artifact", path=root, output="logodds")(x, TB_PROMPTS),
            torch.log((1 - p_art) / p_art),
            atol=1e-4,
        )
    for name, kw in [("compositional", {"output": "soft"}), ("testbed_aesthetic", {}), ("testbed_artifact", {})]:
        r = load_reward(name, path=root, **kw)
        assert r.differentiable
        (g,) = torch.autograd.grad(r(x, TB_PROMPTS).sum(), x)
        assert g.abs().sum() > 0
    assert not load_reward("compositional", path=root).differentiable


def test_testbed_rewards_errors(tmp_path, testbed_assets):
    root, _ = testbed_assets
    with pytest.raises(RewardWeightsError, match="scorers/checker.safetensors"):
        load_reward("compositional", path=tmp_path)
    with pytest.raises(ValueError, match="grammar"):
        load_reward("compositional", path=root)(rand_images(1, 32, 32), ["a purple elephant"])
