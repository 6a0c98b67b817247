"""Reward-guided editing on the testbed: "a red circle ..." -> "a blue circle ...".

    python benchmarks/bench_edit.py            # 3 seeds x 3 prompts
    python benchmarks/bench_edit.py --quick    # 1 seed x 2 prompts, fewer iterations (<= 90 s on idle cores)
    python benchmarks/bench_edit.py --gallery out/edits   # + out/edits/index.html: source -> edit per pair

For each seed and source prompt ("a red circle", "a red circle left of a green square", ...) the base
pipeline draws the source with the 20-step ODE; the edit prompt swaps "red circle" for "blue circle".
Methods, all conditioned on the edit prompt:
* ``edit_control`` (``flowalign.steering.edit_control``, ITOC arXiv 2509.25845): the source noised to
  ``--sigma``, the reverse trajectory's controls optimised for reward_weight x the checker's colour clause
  of the edit prompt bound to the circle (``ColourClause``: the log of the soft probability that a blue
  circle is present, differentiable) minus
  ``--closeness`` x mean((x0 - x_src)^2) in latent space;
* ``sdedit``: the same noised start without controls (the control's iteration 0);
* ``regenerate``: the edit prompt sampled from scratch with the source's initial noise.
Metrics (mean over prompts, then mean ± sd over seeds): ``success`` (the checker's hard verdict that every
clause of the edit prompt holds: blue circle, the other object unchanged in kind), ``colour_success`` (the
colour clause alone), ``outside_change`` (mean |edit - source| over the pixels outside the red circle of
the source: pixels that are red, r > 0.55, g and b < 0.4, dilated by 2 px; channels in [0, 1]) and
``inside_change``; ``source_success``: the checker's verdict on the source for its own prompt (an edit that
keeps everything but the circle's colour succeeds only where the source was right). Last line: JSON.
``--gallery DIR``: every pair's images (source, edit_control, sdedit, regenerate) and DIR/index.html with
them side by side, the metrics under each (``flowalign.gallery.edit_page``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flowalign.cli import bounded  # noqa: E402

PROMPTS = [
    "a red circle",
    "a red circle left of a green square",
    "a red circle above a yellow triangle",
    "a red circle right of a purple square",
]


class ColourClause(torch.nn.Module):
    """The colour clause of each prompt's first object, bound to its shape: log(p + 1e-6), p the checker's
    soft probability that its (colour, shape) cell holds an object, 1 - P(count 0) of that cell's soft count
    (differentiable). The checker's own colour clause asks for the colour anywhere, which the controls
    satisfied by recolouring the other object; the log keeps a gradient where the cell is empty (p has a
    zero slope at zero density, a Gaussian in the soft count at its peak; log p a slope of about 2 / n)."""

    name, differentiable = "colour_clause", True

    def __init__(self, checker: torch.nn.Module):
        super().__init__()
        self.checker = checker

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        from flowalign.testbed.scorers import count_distribution
        from flowalign.testbed.world import COLOR_NAMES, SHAPES, parse_prompt

        n, _ = self.checker.describe(images)  # soft counts [B, colours, shapes]
        groups = [parse_prompt(p).groups[0] for p in prompts]
        cells = n[torch.arange(len(prompts)), [COLOR_NAMES.index(g.color) for g in groups],
                  [SHAPES.index(g.shape) for g in groups]]  # fmt: skip
        return torch.log(1 - count_distribution(cells)[..., 0] + 1e-6)


def clause_index(prompt: str, kind: str, group: int = 0) -> int:
    from flowalign.testbed.world import parse_prompt

    return parse_prompt(prompt).clauses().index((kind, group))


def red_mask(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> [B, 1, H, W] bool: red pixels dilated by 2 px."""
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    m = ((r > 0.55) & (g < 0.4) & (b < 0.4)).float()
    return torch.nn.functional.max_pool2d(m, 5, stride=1, padding=2) > 0


def metrics(checker, src_img, img, targets) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        out = checker(img, targets)
    idx = torch.tensor([clause_index(p, "color") for p in targets])
    mask = red_mask(src_img).expand_as(src_img)
    diff = (img - src_img).abs()
    outside = (diff * ~mask).sum((1, 2, 3)) / (~mask).sum((1, 2, 3)).clamp(min=1)
    inside = (diff * mask).sum((1, 2, 3)) / mask.sum((1, 2, 3)).clamp(min=1)
    colour = out.correct[torch.arange(len(targets)), idx].float()
    return {
        "success": out.all_correct.float(),
        "colour_success": colour,
        "outside_change": outside,
        "inside_change": inside,
    }


def run_seed(model, checker, reward, args, seed: int, sigmas, cfg, pairs: list) -> dict[str, dict[str, torch.Tensor]]:
    from flowalign.sampling.rollout import rollout
    from flowalign.steering.edit_control import EditOptions, edit_control, edit_grid, start_state

    prompts = PROMPTS[: args.prompts]
    targets = [p.replace("a red circle", "a blue circle", 1) for p in prompts]
    c_src, c_tgt = model.encode(prompts, cfg), model.encode(targets, cfg)
    x1 = model.initial_noise(len(prompts), 32, 32, torch.Generator().manual_seed(1000 + seed))
    with torch.no_grad():
        src = rollout(model, c_src, x1, sigmas, "ode").final
        regen = rollout(model, c_tgt, x1, sigmas, "ode").final
        grid = edit_grid(sigmas, args.sigma)
        start = start_state(model, c_tgt, src, grid, "noise", torch.Generator().manual_seed(seed))
        sdedit = rollout(model, c_tgt, start, grid, "ode").final
    opts = EditOptions(sigma=args.sigma, iterations=args.iterations, lr=args.lr, reward_weight=args.reward_weight,
                       closeness=args.closeness)  # fmt: skip
    res = edit_control(model, targets, reward, source_latents=src, options=opts, sigmas=sigmas, cond=c_tgt,
                       generator=torch.Generator().manual_seed(seed))  # fmt: skip
    with torch.no_grad():
        latents = {"source": src, "edit_control": res.latents, "sdedit": sdedit, "regenerate": regen}
        imgs = {k: model.decode(v).clamp(0, 1) for k, v in latents.items()}
    if args.save:
        save_row(args.save, seed, imgs)
    out = {k: metrics(checker, imgs["source"], imgs[k], targets) for k in ("edit_control", "sdedit", "regenerate")}
    with torch.no_grad():  # the source's own prompt: an edit that keeps the rest can only succeed where this holds
        out["source"] = {"success": checker(imgs["source"], prompts).all_correct.float()}
    if args.gallery:
        pairs += gallery_pairs(args.gallery, seed, prompts, targets, imgs, out)
    out["edit_control"]["nfe"] = torch.tensor(float(res.nfe) / len(prompts))
    return out


def gallery_pairs(folder: str, seed: int, prompts: list[str], targets: list[str], imgs: dict, out: dict) -> list:
    """The PNGs of every (prompt, seed) pair under ``folder`` -> their rows for ``write_edit_page``."""
    from flowalign.gallery.edit_page import save_edit_pair

    keys = ("success", "colour_success", "outside_change")
    rows = []
    for i, (p, t) in enumerate(zip(prompts, targets)):
        scores = {m: {k: out[m][k][i] for k in keys if k in out[m]} for m in out}
        rows.append(save_edit_pair(folder, i, seed, p, t, {k: v[i] for k, v in imgs.items()}, scores))
    return rows


def save_row(folder: str, seed: int, imgs: dict[str, torch.Tensor]) -> None:
    """One PNG per seed: rows = prompts, columns = source, edit_control, sdedit, regenerate (4x upscaled)."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    grid = torch.cat([torch.cat(list(imgs[k]), 1) for k in ("source", "edit_control", "sdedit", "regenerate")], 2)
    arr = torch.nn.functional.interpolate(grid[None], scale_factor=4, mode="nearest")[0].permute(1, 2, 0) * 255
    Image.fromarray(arr.round().byte().numpy()).save(os.path.join(folder, f"edit_seed{seed}.png"))


def summarise(per_seed: list[dict]) -> dict:
    out = {}
    for method in per_seed[0]:
        for key in per_seed[0][method]:
            vals = torch.stack([s[method][key].float().mean() for s in per_seed])
            out[f"{method}_{key}"] = round(float(vals.mean()), 4)
            if len(vals) > 1:
                out[f"{method}_{key}_sd"] = round(float(vals.std()), 4)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=bounded(int, "[1, inf)"), default=3)
    ap.add_argument("--prompts", type=bounded(int, f"[1, {len(PROMPTS)}]"), default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sigma", type=bounded(float, "(0, 1]"), default=0.6)
    ap.add_argument("--iterations", type=bounded(int, "[1, inf)"), default=8)
    ap.add_argument("--lr", type=bounded(float, "(0, inf)"), default=0.05)
    ap.add_argument("--reward-weight", type=bounded(float, "(0, inf)"), default=1.0)
    ap.add_argument("--closeness", type=bounded(float, "[0, inf)"), default=0.3)
    ap.add_argument("--steps", type=bounded(int, "[2, inf)"), default=20)
    ap.add_argument("--cfg", type=bounded(float, "[0, inf)"), default=4.5)
    ap.add_argument("--save", default=None, help="folder for one PNG per seed (source | edit | sdedit | regenerate)")
    ap.add_argument("--gallery", default=None, help="folder for an HTML page: source -> edit, sdedit, regenerate")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.prompts, args.iterations = 1, 2, min(args.iterations, 5)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t0 = time.perf_counter()
    from flowalign.steering.config import load_model_with_defaults
    from flowalign.testbed.scorers import load_checker

    model, _, _ = load_model_with_defaults("testbed", 16)
    checker = load_checker().eval().requires_grad_(False)
    reward = ColourClause(checker)
    sigmas = model.sigmas(args.steps, 32, 32)
    per_seed, pairs = [], []
    for seed in range(args.seeds):
        per_seed.append(run_seed(model, checker, reward, args, seed, sigmas, args.cfg, pairs))
        print(f"seed {seed}: {json.dumps(summarise(per_seed[-1:]))}", file=sys.stderr, flush=True)
    summary = summarise(per_seed) | {
        "prompts": args.prompts, "seeds": args.seeds, "sigma": args.sigma, "iterations": args.iterations,
        "lr": args.lr, "reward_weight": args.reward_weight, "closeness": args.closeness, "steps": args.steps,
        "cfg": args.cfg, "seconds": round(time.perf_counter() - t0, 1), "quick": args.quick,
    }  # fmt: skip
    if args.gallery:
        from flowalign.gallery.edit_page import write_edit_page

        info = f"'a red circle' -> 'a blue circle' on the testbed: {json.dumps(summary)}"
        summary["gallery"] = str(write_edit_page(args.gallery, pairs, info=info))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
