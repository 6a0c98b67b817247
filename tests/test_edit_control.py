"""Reward-guided editing by trajectory optimal control (steering/edit_control.py, cli/edit.py).

Closed form: with r(x) = a.x, closeness c and no control cost, the objective of the edited endpoint is
J(x0) = a.x0 - c ||x0 - x_src||^2 / D (the squared distance averaged over the D latent elements); the
last control moves x0 freely, so the optimum is where grad J = a - 2 c (x0 - x_src) / D = 0:
x0* = x_src + D a / (2 c). For D = 2, a = (1, 0.5), c = 2: x0* = x_src + (0.5, 0.25).
"""

from __future__ import annotations

import pytest
import torch

from flowalign.models.analytic import GaussianMixtureFlow
from flowalign.sampling.rollout import rollout
from flowalign.steering.edit_control import EditOptions, check_sources, edit_control, edit_grid, start_state

MIX = dict(
    means=[[-2.0, 0.5], [1.5, -1.0], [0.5, 2.0]], stds=[[0.5, 0.3], [0.4, 0.6], [0.3, 0.3]], weights=[0.3, 0.5, 0.2]
)
A = torch.tensor([1.0, 0.5])


def linear(x):
    return x @ A


def test_controls_reach_the_closed_form_optimum():
    mix = GaussianMixtureFlow(**MIX)
    x_src = mix.sample_data(4, torch.Generator().manual_seed(0))
    opts = EditOptions(sigma=0.5, iterations=60, lr=0.02, closeness=2.0)
    res = edit_control(mix, ["p"] * 4, linear, source_latents=x_src, options=opts, num_steps=4,
                       generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert (res.latents - x_src - torch.tensor([0.5, 0.25])).abs().max() < 2e-2, res.latents - x_src
    # J* = a.(D a / 2c) - c |D a / 2c|^2 / D = 0.625 - 2 * 0.3125 / 2 = 0.3125 above a.x_src
    j_star = float((linear(x_src) + 0.3125).mean())
    assert res.info["history"][-1]["objective"] == pytest.approx(j_star, abs=1e-3)
    # the grid below sigma 0.5 of the 4-step linear grid: 0.5 (start), 0.25, 0 -> 2 steps x 61 passes
    assert res.nfe == 4 * 2 * 61


def test_iteration_zero_is_sdedit_and_inversion_reconstructs():
    mix = GaussianMixtureFlow(**MIX)
    x_src = mix.sample_data(3, torch.Generator().manual_seed(2))
    sig = mix.sigmas(100)
    grid = edit_grid(sig, 0.3)
    assert grid[0] == pytest.approx(0.3) and grid[1] < 0.3 and grid[-1] == 0
    cond = mix.encode(["p"] * 3)
    # forward noising: x = 0.7 x_src + 0.3 eps with eps from the generator
    g = torch.Generator().manual_seed(3)
    eps = torch.randn(x_src.shape, generator=torch.Generator().manual_seed(3))
    assert (start_state(mix, cond, x_src, grid, "noise", g) - (0.7 * x_src + 0.3 * eps)).abs().max() < 1e-6
    res = edit_control(mix, ["p"] * 3, linear, source_latents=x_src, options=EditOptions(sigma=0.3, iterations=1),
                       sigmas=sig, generator=torch.Generator().manual_seed(3))  # fmt: skip
    plain = rollout(mix, cond, 0.7 * x_src + 0.3 * eps, grid, "ode").final
    assert res.info["initial"]["reward"] == pytest.approx(float(linear(plain).mean()), abs=1e-5)
    # ODE inversion up to 0.3 and back on 30 Euler steps returns near the source (Euler error only)
    back = rollout(mix, cond, start_state(mix, cond, x_src, grid, "invert", None), grid, "ode").final
    assert (back - x_src).abs().max() < 0.05


def test_bad_input_is_one_clear_error():
    mix = GaussianMixtureFlow(**MIX)
    with pytest.raises(ValueError, match="no source image"):
        check_sources(None, 32, 32, 1)
    with pytest.raises(ValueError, match="the source image is 16x16 .* samples 32x32; resize it to 32x32"):
        check_sources(torch.rand(1, 3, 16, 16), 32, 32, 1)
    for sigma in (0.0, 1.5):
        with pytest.raises(ValueError, match=f"sigma={sigma}"):
            edit_control(mix, ["p"], linear, source_latents=torch.zeros(1, 2), options=EditOptions(sigma=sigma))

    class Hard(torch.nn.Module):
        name, differentiable = "hard", False

        def forward(self, images, prompts):
            return images[:, 0]

    with pytest.raises(ValueError, match="'hard' has differentiable=False"):
        edit_control(mix, ["p"], Hard(), source_latents=torch.zeros(1, 2))


def _edit(argv, capsys):
    from flowalign.cli import main

    try:
        code = main(["edit", *argv])
    except SystemExit as exc:  # argparse's own errors (typed flags) exit from the parser
        code = exc.code
    return code, capsys.readouterr().err.strip().splitlines()


def test_edit_command_refuses_bad_input_before_loading(tmp_path, capsys):
    from PIL import Image

    small = tmp_path / "small.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(small)
    (tmp_path / "text.png").write_text("not an image")
    out = str(tmp_path / "out")
    cases = [
        ([], "no source image: pass --source IMAGE"),
        (["--source", str(small), "--prompt", "a blue circle"], "is 16x16 but the model samples 32x32"),
        (["--source", str(tmp_path / "text.png"), "--prompt", "a blue circle"], "cannot be read as an image"),
        (["--source", str(small), "--prompt", "a blue circle", "--sigma", "1.5"], "--sigma: '1.5' is out of range"),
        (["--source", str(small), "--prompt", "a blue circle", "--sigma", "0"], "--sigma: '0' is out of range"),
    ]
    for argv, named in cases:
        code, err = _edit([*argv, "--out", out], capsys)
        assert code == 2 and named in err[-1], (argv, err)
    assert not (tmp_path / "out").exists()


def test_edit_command_refuses_a_reward_without_gradients(tmp_path, capsys):
    from PIL import Image

    src = tmp_path / "src.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(src)
    argv = [
        "--source",
        str(src),
        "--prompt",
        "a blue circle",
        "--reward",
        "compositional",
        "--out",
        str(tmp_path / "o"),
    ]
    code, err = _edit(argv, capsys)
    assert code == 2 and "no gradients (differentiable=False)" in err[-1] and "--reward-output soft" in err[-1], err


@pytest.mark.slow
def test_edit_command_on_the_testbed(tmp_path, capsys):
    import json

    from PIL import Image

    src = tmp_path / "src.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(src)
    argv = ["--source", str(src), "--prompt", "a blue circle", "--reward", "compositional", "--reward-output", "soft",
            "--iterations", "2", "--steps", "6", "--out", str(tmp_path / "o")]  # fmt: skip
    code, err = _edit(argv, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "edit.json").read_text())
    assert len(report["history"]) == 3 and all((tmp_path / "o" / f).is_file() for f in report["files"][0])


@pytest.mark.slow
def test_pipeline_entry_edits_a_pil_image(tiny_sd3_pipe):
    """The diffusers-style entry on a real (tiny) StableDiffusion3Pipeline: PIL in, PIL out, the reward
    (redness, differentiable) rises over the SDEdit start."""
    from PIL import Image

    from flowalign.models import SD3Model
    from flowalign.steering.edit_control import edit_pipeline

    size = SD3Model(tiny_sd3_pipe).default_size
    src = Image.new("RGB", (size, size), (40, 60, 200))

    def redness(images, prompts):
        return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))

    opts = EditOptions(sigma=0.8, iterations=3, lr=0.2, reward_weight=10.0, closeness=0.0)
    images, res = edit_pipeline(tiny_sd3_pipe, src, "a red square", redness, options=opts, num_steps=4,
                                generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert isinstance(images[0], Image.Image) and images[0].size == (size, size)
    assert float(res.rewards[0]) > res.info["initial"]["reward"]
    with pytest.raises(ValueError, match="the source image is 8x8"):
        edit_pipeline(tiny_sd3_pipe, Image.new("RGB", (8, 8)), "a red square", redness, options=opts, num_steps=4)
