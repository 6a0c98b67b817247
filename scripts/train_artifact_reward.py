"""Train the artifact reward's head on frozen open_clip image features.

    python scripts/train_artifact_reward.py --data DIR --clip WEIGHTS [--arch ViT-L-14] --out head.safetensors

DIR holds ``clean/`` and ``artifact/`` folders of images (png / jpg / webp, any size). Features are
extracted once with the frozen backbone; a logistic (``--hidden 0``) or one-hidden-layer head is
trained with class-balanced BCE on a stratified split; the head and its metadata are written as
safetensors, to be used with ``load_reward("artifact", path=OUT, clip=WEIGHTS)``. ``--model-config``
registers an extra open_clip architecture JSON (the file's stem is its name). Prints a summary and,
as its last line, one JSON object with the accuracies.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_folder(folder: str, size: int) -> torch.Tensor:
    """Images of a folder -> [N, 3, size, size] float in [0, 1] (sorted by name)."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor, resize

    names = sorted(f for f in os.listdir(folder) if f.lower().endswith(EXTS))
    if not names:
        raise ValueError(
            f"no images ({', '.join(EXTS)}) in {folder}; put clean images in DIR/clean and "
            f"images with artifacts in DIR/artifact."
        )
    out = []
    for n in names:
        img = pil_to_tensor(Image.open(os.path.join(folder, n)).convert("RGB")).float() / 255
        out.append(resize(img, [size, size], antialias=True))
    return torch.stack(out)


def split(n: int, val_fraction: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=g)
    n_val = max(1, round(n * val_fraction)) if n > 1 else 0
    return perm[n_val:], perm[:n_val]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="folder with clean/ and artifact/ image folders")
    p.add_argument("--clip", required=True, help="open_clip weights (file, open_clip dir, hub id or tag)")
    p.add_argument("--arch", default="ViT-L-14", help="open_clip architecture of --clip")
    p.add_argument("--model-config", default=None, help="extra open_clip model config JSON to register")
    p.add_argument("--out", required=True, help="output head file (.safetensors)")
    p.add_argument("--hidden", type=int, default=256, help="hidden width of the head (0 = logistic)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--load-size", type=int, default=256, help="images are resized to this square first")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)

    import open_clip

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from flowalign.rewards.artifact import extract_features, save_head, train_head
    from flowalign.rewards.clip import OpenClipFeatures, load_open_clip

    if args.model_config:
        open_clip.add_model_config(args.model_config)
    clean = load_folder(os.path.join(args.data, "clean"), args.load_size)
    bad = load_folder(os.path.join(args.data, "artifact"), args.load_size)
    features = OpenClipFeatures(load_open_clip("artifact", args.arch, args.clip, param="--clip"))
    x = extract_features(features, torch.cat([clean, bad]))
    y = torch.cat([torch.zeros(len(clean)), torch.ones(len(bad))])
    g = torch.Generator().manual_seed(args.seed)
    (tr_c, va_c), (tr_b, va_b) = split(len(clean), args.val_fraction, g), split(len(bad), args.val_fraction, g)
    tr = torch.cat([tr_c, tr_b + len(clean)])
    va = torch.cat([va_c, va_b + len(clean)])
    train_kw = dict(hidden=args.hidden, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed)
    head, stats = train_head(x[tr], y[tr], x[va], y[va], **train_kw)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    counts = {"n_clean": len(clean), "n_artifact": len(bad)}
    scores = {"val_acc": stats.val_acc, "val_auc": stats.val_auc}
    save_head(head, args.out, args.arch, extra={"clip": str(args.clip), **counts, **scores})
    result = {**counts, "train_acc": stats.train_acc, **scores, "train_loss": stats.train_loss, "out": args.out}
    print(
        f"artifact head: {len(clean)} clean / {len(bad)} artifact images, {x.shape[1]}-d {args.arch} features; "
        f"train acc {stats.train_acc:.3f}, val acc {stats.val_acc:.3f}, val AUC {stats.val_auc:.3f} -> {args.out}"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
