"""Images of known strings rendered with PIL, for the OCR reward's tests and benchmark.

Fonts: the DejaVu TrueType fonts when fontconfig lists them (``fc-list``; Debian's fonts-dejavu-core),
else PIL's built-in scalable default font (``ImageFont.load_default(size=...)``, Pillow >= 10.1).
"""

from __future__ import annotations

import random
import shutil
import subprocess

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

WORDS = [
    "OPEN",
    "Hello World",
    "flowalign",
    "Coffee Shop",
    "SALE 50%",
    "Stop",
    "reward",
    "Welcome Home",
    "Fresh Bread",
    "NO PARKING",
    "Exit",
    "Library",
    "Good Morning",
    "Pizza",
    "Hotel Paris",
    "GRPO",
    "sunset 1999",
    "Big Data",
    "Main Street",
    "Happy Birthday",
    "Tea Time",
    "Books",
    "City Park",
    "Jazz Night",
]
STYLES = ("DejaVuSans.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Oblique.ttf")


def font_files() -> list[str]:
    """Up to four DejaVu font files found by fontconfig (possibly none)."""
    if shutil.which("fc-list") is None:
        return []
    out = subprocess.run(["fc-list", "--format", "%{file}\n"], capture_output=True, text=True, check=False).stdout
    files = {f.rsplit("/", 1)[-1]: f for f in out.split()}
    return [files[s] for s in STYLES if s in files]


def fonts() -> list[tuple[str, object]]:
    """(label, factory size -> ImageFont) for each available font; PIL's default font always included."""
    out: list[tuple[str, object]] = [
        (f.rsplit("/", 1)[-1], lambda s, f=f: ImageFont.truetype(f, s)) for f in font_files()
    ]
    out.append(("pil-default", lambda s: ImageFont.load_default(size=s)))
    return out


def render(text: str, font, size: int = 256, position: float = 0.5, seed: int = 0) -> Image.Image:
    """``text`` on a light background of side ``size``; the font shrinks until the line fits with a margin;
    ``position`` in [0, 1] places it from the top to the bottom; a random dark ink and light paper."""
    rng = random.Random(seed)
    paper = tuple(rng.randint(200, 255) for _ in range(3))
    ink = tuple(rng.randint(0, 70) for _ in range(3))
    img = Image.new("RGB", (size, size), paper)
    draw = ImageDraw.Draw(img)
    pt = max(12, size // 9)
    while True:
        f = font(pt)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
        if right - left <= size * 0.85 or pt <= 10:
            break
        pt -= 1
    w, h = right - left, bottom - top
    x = (size - w) // 2 - left + rng.randint(-size // 20, size // 20)
    y = int(size * 0.1 + (size * 0.8 - h) * position) - top
    draw.text((x, y), text, fill=ink, font=f)
    return img


def text_set(n: int, size: int = 256, seed: int = 0) -> tuple[list[Image.Image], list[str], list[str]]:
    """n rendered images cycling over words x fonts x sizes x positions: (images, strings, font labels)."""
    rng = random.Random(seed)
    faces = fonts()
    images, strings, labels = [], [], []
    for i in range(n):
        word = WORDS[i % len(WORDS)]
        label, face = faces[(i // len(WORDS) + i) % len(faces)]
        scale = (1.0, 0.8, 1.2)[i % 3]
        img = render(
            word, lambda s, face=face, scale=scale: face(max(10, int(s * scale))), size, rng.random(), seed + i
        )
        images.append(img)
        strings.append(word)
        labels.append(label)
    return images, strings, labels


def blur(img: Image.Image, radius: float = 1.6) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(radius))


def noise(img: torch.Tensor, std: float = 0.25, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (img + std * torch.randn(img.shape, generator=g)).clamp(0, 1)


def change_one(text: str, seed: int = 0) -> str:
    """``text`` with one non-space character replaced by a different letter (same length)."""
    rng = random.Random(seed)
    idx = rng.choice([i for i, c in enumerate(text) if c != " "])
    new = rng.choice([c for c in "QXZJKVWqxzjkvw" if c.lower() != text[idx].lower()])
    return text[:idx] + new + text[idx + 1 :]


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL RGB images -> [B, 3, H, W] float in [0, 1] (torchvision's to_tensor, without importing it)."""
    return torch.stack([torch.from_numpy(np.asarray(i.convert("RGB")).copy()).permute(2, 0, 1) for i in images]) / 255.0
