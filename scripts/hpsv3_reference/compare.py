"""flowalign's ``hpsv3`` reward vs the ``hpsv3`` package's own scoring code, on a tiny random
Qwen2-VL (``flowalign.rewards.tiny_qwen2vl``): both read the same ``HPSv3.safetensors`` and PNGs.

    python scripts/hpsv3_reference/compare.py [--workdir DIR]   # prints one JSON line

Used by ``tests/test_hpsv3.py`` (marker ``hpsv3ref``) and ``benchmarks/bench_rewards.py``. The
reference runs in the venv built by ``make_venv.sh`` (cached; the first build needs the package
registry), as a subprocess: weights and images in as files, scores out as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROMPTS = [
    "a red cat on a hill",
    "two blue squares above a yellow triangle, oil painting",
    "a photo of a dog",
    "sky",
    "three green circles",
    "a black square left of a white circle",
]
SIZES = [(448, 448)] * 4 + [(224, 896)] * 2  # 200704-pixel sizes: no resize on either side


def build_venv(timeout: float = 1800) -> tuple[str, float]:
    """(the reference venv's python, seconds spent); raises RuntimeError with pip's tail on failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", os.path.join(HERE, "make_venv.sh")], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"make_venv.sh failed (rc {proc.returncode}): {proc.stderr[-1500:]}")
    return proc.stdout.strip().splitlines()[-1], time.perf_counter() - t0


def write_case(workdir: str, seed: int = 0) -> tuple[str, list[dict]]:
    """Tiny weights + PNGs + items.json in ``workdir``; returns (model dir, items)."""
    import numpy as np
    from PIL import Image

    from flowalign.rewards.tiny_qwen2vl import write_tiny_hpsv3

    model_dir = write_tiny_hpsv3(os.path.join(workdir, "tiny_hpsv3"), seed)
    rng = np.random.default_rng(seed)
    items = []
    for i, ((h, w), prompt) in enumerate(zip(SIZES, PROMPTS)):
        smooth = rng.integers(0, 256, (h // 56, w // 56, 3), dtype=np.uint8)  # blocky + noise: not flat
        img = np.kron(smooth, np.ones((56, 56, 1), dtype=np.uint8)) // 2 + rng.integers(
            0, 128, (h, w, 3), dtype=np.uint8
        )
        path = os.path.join(workdir, f"img{i}.png")
        Image.fromarray(img.astype(np.uint8)).save(path)
        items.append({"image": path, "prompt": prompt})
    with open(os.path.join(workdir, "items.json"), "w") as f:
        json.dump(items, f)
    return model_dir, items


def reference_scores(python: str, model_dir: str, workdir: str, timeout: float = 600) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [
        python,
        os.path.join(HERE, "score.py"),
        "--base",
        model_dir,
        "--checkpoint",
        os.path.join(model_dir, "HPSv3.safetensors"),
        "--items",
        os.path.join(workdir, "items.json"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir)
    if proc.returncode != 0:
        raise RuntimeError(f"reference runner failed (rc {proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ours(model_dir: str, items: list[dict]):
    """flowalign's (mu, sigma) [N, 2], one call per image size (a batch shares one size)."""
    import numpy as np
    import torch
    from PIL import Image

    from flowalign.rewards.registry import load_reward

    reward = load_reward("hpsv3", model_dir)
    out = []
    for it in items:
        x = torch.from_numpy(np.array(Image.open(it["image"]).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            out.append(reward.mu_sigma(x, [it["prompt"]]))
    return torch.cat(out)


def compare(workdir: str, python: str | None = None) -> dict:
    import torch

    build_s = None
    if python is None:
        python, build_s = build_venv()
    model_dir, items = write_case(workdir)
    t0 = time.perf_counter()
    ref = reference_scores(python, model_dir, workdir)
    ref_s = time.perf_counter() - t0
    mine = ours(model_dir, items)
    theirs = torch.tensor(ref["mu_sigma"])
    return {
        "hpsv3_vs_reference_max_abs_diff": float((mine[:, 0] - theirs[:, 0]).abs().max()),
        "hpsv3_sigma_max_abs_diff": float((mine[:, 1] - theirs[:, 1]).abs().max()),
        "hpsv3_mu_range": float(theirs[:, 0].max() - theirs[:, 0].min()),
        "n_images": len(items),
        "venv_s": None if build_s is None else round(build_s, 1),
        "reference_run_s": round(ref_s, 1),
        "reference_transformers": ref["transformers"],
        "mu_ours": mine[:, 0].tolist(),
        "mu_reference": theirs[:, 0].tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(compare(args.workdir or tmp)))


if __name__ == "__main__":
    main()
