"""The reward contract, the one image-preprocessing helper and the weight-file checks.

A reward is a frozen ``torch.nn.Module`` that maps images ``[B, 3, H, W]`` float in [0, 1] (any
size) and ``B`` prompts (plus optional per-sample metadata columns) to a float32 tensor ``[B]``.
It resizes and normalises the images itself with torch ops, so gradients reach the pixels when the
reward says ``differentiable = True``; it splits large batches internally (``batch_size``).

Weights are never fetched unless the caller passes a hub id: ``resolve_weights`` accepts a local
file, a local directory or a hub id and raises ONE ``RewardWeightsError`` naming the expected files
and how to supply them when something is missing or wrong.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class RewardWeightsError(ValueError):
    """Weights for a reward are missing, incomplete or of the wrong shape."""


class Reward(nn.Module):
    """Base class: subclasses set ``name`` / ``differentiable`` and implement ``score``.

    ``forward`` validates the inputs once, moves images to the reward's device, splits the batch
    into chunks of ``batch_size`` (metadata columns are split alongside), runs ``score`` (under
    ``torch.no_grad`` when the reward is not differentiable) and returns fp32 ``[B]``. The module
    stays in eval mode and its parameters are frozen: ``.train()`` is a no-op.
    """

    name: str = "reward"
    differentiable: bool = True
    batch_size: int = 32

    def score(self, images: Tensor, prompts: list[str], **metadata: Any) -> Tensor:
        raise NotImplementedError

    def forward(self, images: Tensor, prompts: str | Sequence[str], **metadata: Any) -> Tensor:
        images, prompts = check_inputs(images, prompts, self.name)
        images = images.to(self.device)
        b, out = images.shape[0], []
        for i in range(0, b, self.batch_size):
            sl = slice(i, min(b, i + self.batch_size))
            meta = {k: _rows(v, sl, b, k) for k, v in metadata.items()}
            with torch.set_grad_enabled(self.differentiable and torch.is_grad_enabled()):
                out.append(self.score(images[sl], prompts[sl], **meta).float().reshape(-1))
        return torch.cat(out)

    def freeze(self) -> Reward:
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> Reward:  # scorers never leave eval mode (no dropout)
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for t in self.parameters():
            return t.dtype
        return torch.float32

    def extra_repr(self) -> str:
        return f"name={self.name!r}, differentiable={self.differentiable}"


def check_inputs(images: Any, prompts: Any, name: str = "reward") -> tuple[Tensor, list[str]]:
    """The reward boundary: images [B,3,H,W] float in [0,1], prompts a str or B str."""
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(
            f"{name}: images must be a float tensor [B, 3, H, W] in [0, 1], got {shape}; "
            f"convert PIL/uint8 images with torchvision.transforms.functional.to_tensor."
        )
    if not images.is_floating_point():
        raise ValueError(f"{name}: images have dtype {images.dtype}; pass float in [0, 1] (e.g. images.float() / 255).")
    b = images.shape[0]
    if isinstance(prompts, str):
        prompts = [prompts] * b
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"{name}: prompts must be a str or a list of {b} str, got {type(prompts).__name__}.")
    if len(prompts) != b:
        raise ValueError(f"{name}: got {len(prompts)} prompts for {b} images; pass one prompt per image.")
    return images, list(prompts)


def _rows(value: Any, sl: slice, b: int, key: str) -> Any:
    if torch.is_tensor(value) or isinstance(value, (list, tuple)):
        if len(value) != b:
            raise ValueError(f"metadata column {key!r} has {len(value)} rows for a batch of {b}.")
        return value[sl]
    return value  # a scalar / batch-free value goes to every chunk


def preprocess(
    images: Tensor, size: int | tuple[int, int], mean: Sequence[float], std: Sequence[float], mode: str = "crop"
) -> Tensor:
    """Differentiable image preparation for a vision tower: [B,3,H,W] in [0,1] -> normalised [B,3,s,s].

    Bicubic antialiased resize (torch's kernel, the one torchvision's tensor ``Resize`` uses), then:
    * ``crop``: shortest side to ``size`` (long side truncated as torchvision does), centre crop —
      CLIP / open_clip / BLIP / PickScore evaluation transforms;
    * ``pad``: longest side to ``size`` (rounded), zero padding split as ``pad // 2`` before — HPSv2's
      ``ResizeMaxSize`` validation transform;
    * ``squash``: straight resize to ``size`` x ``size``.
    Square inputs give the same result in every mode. Then ``(x - mean) / std`` per channel.
    """
    th, tw = (size, size) if isinstance(size, int) else size
    if th != tw:
        raise ValueError(f"preprocess needs a square target size, got {size}.")
    x = images.float()
    h, w = x.shape[-2:]
    if mode == "crop":
        short, long_ = min(h, w), max(h, w)
        new_long = int(th * long_ / short)  # torchvision Resize(int) truncates the long side
        nh, nw = (th, new_long) if h <= w else (new_long, th)
        x = _resize(x, nh, nw)
        top, left = int(round((nh - th) / 2.0)), int(round((nw - tw) / 2.0))
        x = x[..., top : top + th, left : left + tw]
    elif mode == "pad":
        scale = th / float(max(h, w))
        nh, nw = round(h * scale), round(w * scale)
        x = _resize(x, nh, nw)
        ph, pw = th - nh, tw - nw
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)
    elif mode == "squash":
        x = _resize(x, th, tw)
    else:
        raise ValueError(f"preprocess mode={mode!r}; use 'crop', 'pad' or 'squash'.")
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def _resize(x: Tensor, h: int, w: int) -> Tensor:
    if tuple(x.shape[-2:]) == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)


def laion_mlp(width: int) -> nn.Sequential:
    """The MLP head shared by ImageReward and the LAION aesthetic predictor: Linear layers
    width-1024-128-64-16-1 without activations; the dropouts are parameter-free slots kept so the
    indices (0/2/4/6/7) match both published checkpoints."""
    return nn.Sequential(
        nn.Linear(width, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


def unique_prompts(prompts: list[str]) -> tuple[list[str], Tensor]:
    """Deduplicate prompts (a group shares one): (unique list, inverse index [B])."""
    uniq: dict[str, int] = {}
    inv = [uniq.setdefault(p, len(uniq)) for p in prompts]
    return list(uniq), torch.tensor(inv, dtype=torch.long)


# --- weights -----------------------------------------------------------------------------------------
def weights_error(reward: str, expected: Sequence[str], how: str, problem: str) -> RewardWeightsError:
    files = "\n".join(f"  - {f}" for f in expected)
    return RewardWeightsError(f"{reward}: {problem}\nExpected files:\n{files}\nHow to supply them: {how}")


def is_hub_id(path: str) -> bool:
    """'owner/name' that is not a local path."""
    parts = path.split("/")
    return (
        len(parts) == 2
        and all(parts)
        and not os.path.exists(path)
        and not path.startswith((".", "~"))
        and "\\" not in path
        and not path.endswith((".pt", ".pth", ".bin", ".safetensors", ".json", ".txt", ".ckpt"))
    )


def resolve_weights(
    reward: str,
    path: str | os.PathLike | None,
    files: Sequence[str],
    how: str,
    alternatives: Sequence[Sequence[str]] = (),
) -> dict[str, str]:
    """Find ``files`` (names) in a local directory or download them from a hub repo id.

    ``path`` may be a directory holding the files, a single file (only when one file is expected),
    or a hub id ``owner/name`` (downloaded through huggingface_hub, only because the caller asked).
    ``alternatives`` are other acceptable file-name sets (e.g. HPS v2.0 vs v2.1). Returns
    {name: local path}; anything missing is one ``RewardWeightsError``.
    """
    options = [list(files), *[list(a) for a in alternatives]]
    listing = [f"{' + '.join(o)}" for o in options]
    if path is None:
        raise weights_error(reward, listing, how, "no weights given (this reward never downloads by default).")
    path = os.path.expanduser(str(path))
    if os.path.isfile(path):
        if len(files) != 1:
            raise weights_error(
                reward,
                listing,
                how,
                f"{path} is a single file but {len(files)} files are needed; pass the directory that holds them.",
            )
        return {files[0]: path}
    if os.path.isdir(path):
        for option in options:
            found = {f: os.path.join(path, f) for f in option}
            if all(os.path.isfile(p) for p in found.values()):
                return found
        have = sorted(os.listdir(path))[:20]
        raise weights_error(reward, listing, how, f"directory {path} lacks the expected files (it has {have}).")
    if is_hub_id(path):
        try:
            from huggingface_hub import hf_hub_download

            return {f: hf_hub_download(path, f) for f in files}
        except Exception as e:  # offline, unknown repo, missing file
            raise weights_error(
                reward,
                listing,
                how,
                f"could not fetch {files} from hub repo {path!r} ({type(e).__name__}: {str(e)[:200]}).",
            ) from e
    raise weights_error(reward, listing, how, f"{path!r} is neither a file, a directory nor a hub id.")


def load_state_dict_file(reward: str, path: str, expected: Sequence[str], how: str) -> dict[str, Tensor]:
    """A .safetensors file or a torch pickle read with ``weights_only=True`` -> flat state dict.
    A checkpoint dict that wraps it under 'state_dict' / 'model' is unwrapped."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj: Any = load_file(path)
        else:
            try:  # memory-map large zip-format checkpoints instead of reading them whole
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # legacy (non-zip) pickles cannot be memory-mapped
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise weights_error(reward, expected, how, f"cannot read {path} ({type(e).__name__}: {str(e)[:200]}).") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise weights_error(reward, expected, how, f"{path} does not hold a state dict of tensors.")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_into(
    reward: str,
    module: nn.Module,
    state: dict[str, Tensor],
    expected: Sequence[str],
    how: str,
    ignore: Sequence[str] = (),
) -> None:
    """Strict load with one clear error on missing / unexpected / mis-shaped keys."""
    own = module.state_dict()
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in ignore)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:2]})")
        raise weights_error(
            reward,
            expected,
            how,
            "the weights do not match the model: " + "; ".join(parts) + ". Is this the right file / architecture?",
        )
    module.load_state_dict(state, strict=True)
