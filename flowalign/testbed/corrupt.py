"""Image corruptions (what the artifact detector learns to flag) and the aesthetic proxy's target.

All functions take and return images [B, 3, H, W] float in [0, 1] and draw their randomness from a
``torch.Generator``, so a seed fixes the output.

Corruptions, each at a strength drawn from a range chosen so that it is visible at 32x32:
  * ``noise``         additive Gaussian noise, std 0.06-0.2;
  * ``checkerboard``  a +-a period-2 or period-4 checker pattern (a typical upsampling artifact);
  * ``blocky``        4x4 / 8x8 block averaging (JPEG-like blockiness) blended in;
  * ``oversaturate``  saturation gain 2.2-3.5 about the pixel mean plus brightening, clipped;
  * ``smear``         a directional box blur (length 5-9 px) over the image (motion smear).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CORRUPTIONS = ("noise", "checkerboard", "blocky", "oversaturate", "smear")


def _u(lo: float, hi: float, n: int, g: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def noise(x: Tensor, g: torch.Generator) -> Tensor:
    std = _u(0.06, 0.2, x.shape[0], g).view(-1, 1, 1, 1)
    return (x + std * torch.randn(x.shape, generator=g)).clamp(0, 1)


def checkerboard(x: Tensor, g: torch.Generator) -> Tensor:
    b, _, h, w = x.shape
    amp = _u(0.07, 0.2, b, g).view(-1, 1, 1, 1)
    period = torch.where(torch.rand(b, generator=g) < 0.5, 2, 4).view(-1, 1, 1, 1)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pattern = (((yy // (period // 2)) + (xx // (period // 2))) % 2).float() * 2 - 1  # [B,1,H,W]
    return (x + amp * pattern).clamp(0, 1)


def blocky(x: Tensor, g: torch.Generator) -> Tensor:
    b = x.shape[0]
    out = x.clone()
    big = torch.rand(b, generator=g) < 0.5
    for k, sel in ((4, ~big), (8, big)):
        if sel.any():
            pooled = F.interpolate(F.avg_pool2d(x[sel], k), scale_factor=k, mode="nearest")
            mix = _u(0.7, 1.0, int(sel.sum()), g).view(-1, 1, 1, 1)
            out[sel] = mix * pooled + (1 - mix) * x[sel]
    return out


def oversaturate(x: Tensor, g: torch.Generator) -> Tensor:
    b = x.shape[0]
    gain = _u(2.2, 3.5, b, g).view(-1, 1, 1, 1)
    bright = _u(1.3, 1.8, b, g).view(-1, 1, 1, 1)
    mean = x.mean(1, keepdim=True)
    return (mean * bright + gain * (x - mean)).clamp(0, 1)


def smear(x: Tensor, g: torch.Generator) -> Tensor:
    b = x.shape[0]
    out = torch.empty_like(x)
    for i in range(b):
        length = int(torch.randint(5, 10, (1,), generator=g))
        kernel = torch.full((3, 1, 1, length), 1.0 / length)
        if torch.rand(1, generator=g) < 0.5:
            kernel = kernel.transpose(2, 3)
        ph, pw = kernel.shape[2] // 2, kernel.shape[3] // 2
        padded = F.pad(x[i : i + 1], (pw, kernel.shape[3] - 1 - pw, ph, kernel.shape[2] - 1 - ph), mode="replicate")
        out[i] = F.conv2d(padded, kernel, groups=3)[0]
    return out


FUNCS = {"noise": noise, "checkerboard": checkerboard, "blocky": blocky, "oversaturate": oversaturate, "smear": smear}


def corrupt(x: Tensor, g: torch.Generator, kinds: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Apply one random corruption per image. Returns (corrupted [B,3,H,W], kind index [B])."""
    b = x.shape[0]
    if kinds is None:
        kinds = torch.randint(len(CORRUPTIONS), (b,), generator=g)
    out = x.clone()
    for k, name in enumerate(CORRUPTIONS):
        sel = kinds == k
        if sel.any():
            out[sel] = FUNCS[name](x[sel], g)
    return out, kinds


def mild(x: Tensor, g: torch.Generator) -> Tensor:
    """Benign variation a clean image may carry (slight blur, faint noise): still 'clean'."""
    b = x.shape[0]
    sigma = _u(0.0, 0.6, b, g).clamp(min=0.25)  # <= 0.25 px: numerically no blur
    k = torch.arange(-2, 3, dtype=torch.float32)
    w = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None] ** 2))
    w = (w / w.sum(1, keepdim=True)).repeat_interleave(3, 0)  # [B*3, 5] separable kernels
    out = F.pad(x.reshape(1, b * 3, *x.shape[2:]), (2, 2, 2, 2), mode="replicate")
    out = F.conv2d(F.conv2d(out, w.view(-1, 1, 1, 5), groups=b * 3), w.view(-1, 1, 5, 1), groups=b * 3)
    std = _u(0.0, 0.02, b, g).view(-1, 1, 1, 1)
    return (out.view_as(x) + std * torch.randn(x.shape, generator=g)).clamp(0, 1)


def image_stats(x: Tensor) -> dict[str, Tensor]:
    """Per-image saturation, contrast and edge energy [B] (differentiable)."""
    mx, mn = x.max(1).values, x.min(1).values
    sat = ((mx - mn) / (mx + 0.05)).mean((1, 2))
    lum = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    contrast = lum.flatten(1).std(1)
    edge = (lum[:, 1:] - lum[:, :-1]).abs().mean((1, 2)) + (lum[:, :, 1:] - lum[:, :, :-1]).abs().mean((1, 2))
    return {"saturation": sat, "contrast": contrast, "edge": edge}


def aesthetic_target(x: Tensor) -> Tensor:
    """The hand-defined 'aesthetic' the proxy regresses, in (0, 10): likes saturation, contrast, edges.

    Clean shape images score about 3-5; noise, over-saturation and checkerboards score higher, which
    is exactly what makes a proxy trained on it hackable.
    """
    s = image_stats(x)
    z = 4.0 * (s["saturation"] - 0.25) + 8.0 * (s["contrast"] - 0.15) + 10.0 * (s["edge"] - 0.06)
    return 10.0 * torch.sigmoid(z)
