"""The rewards of issue 27 for ``bench_rewards.py``: OCR on rendered text, a served reward against the
in-process one, and a VLM judge's pairwise consistency on the test server. Each function returns the
keys it adds to the bench's JSON line.

* ``ocr``: ``n`` PIL-rendered strings (tests/text_images.py: DejaVu fonts from fontconfig + PIL's default
  font, 3 sizes, random positions, 256 px) read by the PP-OCRv4 models (det side 320);
  ``ocr_clean_mean``; degraded: Gaussian blur (radius 3 px), noise (std 0.5) on the first ``n_degraded``
  images, and one character changed (the prompt's string differs from the rendered one in one letter:
  scored on the clean recognitions, expected 1 - 1/len); ``ocr_degraded_mean`` is the mean of the three means.
* ``served``: ``flowalign serve-reward testbed_aesthetic`` in a subprocess (same torch threads) vs the
  in-process reward on 8-bit images: max abs diff, images/s ratio (best of 3).
* ``judge``: ``tests/servers/judge_server.py`` (deterministic brightness judge); (a, b) then (b, a).
"""

from __future__ import annotations

import sys
import time

import torch


def ocr(quick: bool) -> dict:
    import text_images as ti

    from flowalign.rewards.ocr import load_ocr, normalise, ocr_score

    n, n_degraded = 200, (32 if quick else 200)
    images, strings, labels = ti.text_set(n, size=256)
    x = ti.to_tensor(images)
    reward = load_ocr(det_limit_side_len=320)
    t0 = time.perf_counter()
    read = reward.recognise(x)
    per_image = (time.perf_counter() - t0) / n
    clean = [ocr_score(r, s) for r, s in zip(read, strings)]
    changed = [ocr_score(r, ti.change_one(s, seed=i)) for i, (r, s) in enumerate(zip(read, strings))]
    expected = [1 - 1 / len(normalise(s)) for s in strings]
    sub = slice(0, n_degraded)
    blurred = [
        ocr_score(r, s)
        for r, s in zip(reward.recognise(ti.to_tensor([ti.blur(i, 3.0) for i in images[sub]])), strings[sub])
    ]
    noised = [ocr_score(r, s) for r, s in zip(reward.recognise(ti.noise(x[sub], 0.5)), strings[sub])]
    return {
        "ocr_clean_mean": round(mean(clean), 4),
        "ocr_degraded_mean": round(mean([mean(blurred), mean(noised), mean(changed)]), 4),
        "ocr_blurred_mean": round(mean(blurred), 4),
        "ocr_noised_mean": round(mean(noised), 4),
        "ocr_changed_char_mean": round(mean(changed), 4),
        "ocr_changed_char_expected": round(mean(expected), 4),
        "ocr_images": {"clean": n, "blurred": n_degraded, "noised": n_degraded, "changed_char": n},
        "ocr_fonts": sorted(set(labels)),
        "ocr_s_per_image": round(per_image, 3),
    }


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def served(quick: bool) -> dict:
    from servers.process import flowalign, start, stop

    from flowalign.rewards import load_reward
    from flowalign.rewards.remote import quantise

    threads = torch.get_num_threads()
    proc, url = start([*flowalign(), "serve-reward", "testbed_aesthetic", "--port", "0", "--threads", str(threads)])
    try:
        remote = load_reward(f"remote:{url}", batch_size=32, concurrency=2)
        local = load_reward("testbed_aesthetic")
        n = 128 if quick else 512
        x = quantise(torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
        prompts = ["two red circles"] * n
        diff = float((remote(x, prompts) - local(x, prompts)).abs().max())
        t_remote = min(_timed(remote, x, prompts) for _ in range(3))
        t_local = min(_timed(local, x, prompts) for _ in range(3))
    finally:
        stop(proc)
    return {
        "remote_vs_local_max_abs_diff": diff,
        "remote_throughput_ratio": round(t_local / t_remote, 4),
        "remote_images_per_s": round(n / t_remote, 1),
        "local_images_per_s": round(n / t_local, 1),
        "served_setting": f"testbed_aesthetic, {n} images 32px, requests of 32, 2 in flight, {threads} torch threads",
    }


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def judge() -> dict:
    from servers.process import ROOT, start, stop

    from flowalign.rewards import load_reward

    proc, url = start([sys.executable, str(ROOT / "tests" / "servers" / "judge_server.py"), "--port", "0"])
    try:
        pairwise = load_reward("vlm_pairwise", url=url, concurrency=4)
        g = torch.Generator().manual_seed(0)
        a = torch.rand(32, 3, 16, 16, generator=g)
        b = torch.rand(32, 3, 16, 16, generator=g)
        consistency = pairwise.consistency(a, b, ["a photo of a cat"] * 32)
    finally:
        stop(proc)
    return {
        "judge_pairwise_consistency": consistency,
        "judge_parse_failures": pairwise.parse_failures,
        "judge_requests": pairwise.requests,
    }
