"""Rendering of shapes-world scenes: ``render`` (scenes -> images, anti-aliased signed-distance
shapes, batched in torch) and ``distort`` (the same objects drawn imperfectly, as a generator
would: rotation, stretch, wobbly edges, colour drift). Scenes and their grammar: ``world.py``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .world import BACKGROUND, IMAGE_SIZE, SHAPES, Obj, Scene


def render(scenes: list[Scene]) -> Tensor:
    """Scenes -> images [B, 3, 32, 32] float32 in [0, 1] (anti-aliased signed-distance shapes)."""
    k = max((len(s.objects) for s in scenes), default=0)
    b = len(scenes)
    img = torch.tensor(BACKGROUND, dtype=torch.float32).view(1, 3, 1, 1).repeat(b, 1, IMAGE_SIZE, IMAGE_SIZE)
    if k == 0:
        return img
    tab_np = np.zeros((b, k, 10), dtype=np.float32)  # x, y, size, shape, r, g, b, valid, angle, aspect
    for i, s in enumerate(scenes):
        for j, o in enumerate(s.objects):
            tab_np[i, j] = (o.x, o.y, o.size, SHAPES.index(o.shape), *o.rgb, 1.0, o.angle, o.aspect)
    tab = torch.from_numpy(tab_np)
    coords = torch.arange(IMAGE_SIZE, dtype=torch.float32) + 0.5
    py, px = coords.view(1, 1, -1, 1), coords.view(1, 1, 1, -1)
    ux, uy = px - tab[..., 0, None, None], py - tab[..., 1, None, None]  # [B, K, H, W]
    cos, sin, asp = tab[..., 8, None, None].cos(), tab[..., 8, None, None].sin(), tab[..., 9, None, None]
    dx, dy = (cos * ux + sin * uy) / asp, (cos * uy - sin * ux) * asp
    size = tab[..., 2, None, None]
    circle = torch.sqrt(dx**2 + dy**2) - size
    square = torch.maximum(dx.abs(), dy.abs()) - 0.88 * size
    r = 1.15 * size  # triangle circumradius; inradius r / 2; outward edge normals below
    s3 = 3**0.5 / 2
    tri = torch.maximum(dy, torch.maximum(-s3 * dx - 0.5 * dy, s3 * dx - 0.5 * dy)) - r / 2
    shape = tab[..., 3, None, None]
    sdf = torch.where(shape == 0, circle, torch.where(shape == 1, square, tri))
    if any(s.wobble is not None for s in scenes):
        field = torch.from_numpy(
            np.stack([np.zeros((6, 6)) if s.wobble is None else s.wobble for s in scenes]).astype(np.float32)
        )
        sdf = sdf + torch.nn.functional.interpolate(
            field[:, None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bicubic", align_corners=False
        )
    alpha = (0.5 - sdf).clamp(0, 1) * tab[..., 7, None, None]
    for j in range(k):
        a = alpha[:, j, None]
        img = img * (1 - a) + tab[:, j, 4:7, None, None] * a
    return img


def distort(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same objects, imperfectly drawn (rotation, stretch, wobbly edges, colour drift), as a
    generator draws them; labels are unchanged. Used to make the checker fair to generated images."""
    objs = [
        Obj(
            o.color,
            o.shape,
            o.x,
            o.y,
            o.size * float(rng.uniform(0.85, 1.15)),
            tuple(float(v) for v in np.clip(np.asarray(o.rgb) + rng.uniform(-0.08, 0.08, 3), 0, 1)),
            float(rng.uniform(-0.4, 0.4)),
            float(np.exp(rng.uniform(-0.2, 0.2))),
        )
        for o in scene.objects
    ]
    return Scene(objs, scene.prompt, rng.normal(0, 1, (6, 6)) * rng.uniform(0, 1.0))
