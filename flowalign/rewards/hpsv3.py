"""HPSv3 (Ma et al. 2025, "HPSv3: Towards Wide-Spectrum Human Preference Score", arXiv 2508.03789).

A Qwen2-VL backbone reads ``[system turn] <|im_start|>user <image> INSTRUCTION(prompt) ... <|Reward|>``
and an MLP head (``rm_head``: hidden-1024-ReLU-16-ReLU-2) maps the final-norm hidden state at the
added ``<|Reward|>`` token to ``(mu, sigma)`` of the preference score; the reward is ``mu``, as
``hpsv3.HPSv3RewardInferencer.reward(...)[:, 0]``.

Checkpoint format (what ``MizzenAI/HPSv3`` publishes): ``HPSv3.safetensors``, the full state dict of
the package's ``Qwen2VLForConditionalGeneration`` subclass in transformers-4.x names (``model.*`` text
model, ``visual.*``, ``lm_head.weight``, ``rm_head.{0,3,5}.*``), with the embedding rows resized for
``<|Reward|>``; the architecture, tokenizer, chat template and image processor come from the base
``Qwen/Qwen2-VL-7B-Instruct``. Here the keys are renamed to transformers 5's ``Qwen2VLModel``
(``language_model.*`` / ``visual.*``); ``lm_head`` is unused by the score and not loaded.

What is scored, matching the package exactly:
* images are resized so that ``H*W`` is 256 * 28 * 28 with both sides multiples of 28 (Qwen-VL's
  ``smart_resize`` with min_pixels = max_pixels = 200704), then normalised and cut into 14x14x2
  patches as ``Qwen2VLImageProcessor`` does (448x448 -> 1024 patches -> 256 image tokens);
* the package calls the text model with ``position_ids=None``, i.e. plain 1-D positions for all three
  M-RoPE sections (not Qwen2-VL's 3-D image positions); this module passes the same positions;
* batches are right-padded with the pad token; the reward token is read before any padding.

Departures: preprocessing is torch ops on tensors (bicubic, antialiased: the package's own tensor
path), so it is differentiable; the package's default path resizes 8-bit PIL images with PIL's
bicubic, which differs slightly when an image is not already at a 28-multiple 200704-pixel size
(448x448, 224x896, ... pass through unchanged on both paths). fp32 by default (the package runs
bf16); pass ``dtype`` for bf16 (the head stays fp32 as in the package). The instruction text below
is the checkpoint's input format, reproduced because the scores depend on it.
"""

from __future__ import annotations

import math
import os

import torch
from torch import Tensor, nn

from .base import Reward, _resize, load_into, resolve_weights, unique_prompts, weights_error

FILE = "HPSv3.safetensors"
HUB_ID = "MizzenAI/HPSv3"
BASE_HUB_ID = "Qwen/Qwen2-VL-7B-Instruct"
HOW = (
    f"download {FILE} from the hub repo {HUB_ID} and pass load_reward('hpsv3', path='/dir/or/{FILE}', "
    f"base='/dir/of/Qwen2-VL-7B-Instruct') (config.json + processor files of {BASE_HUB_ID}); or pass "
    f"path='{HUB_ID}', base='{BASE_HUB_ID}' (network)."
)
REWARD_TOKEN = "<|Reward|>"
PIXELS = 256 * 28 * 28  # the package's min_pixels = max_pixels
INSTRUCTION = "\n".join(  # the checkpoint's instruction, line by line (trailing spaces are part of it)
    [
        "",
        "You are tasked with evaluating a generated image based on Visual Quality and Text "
        "Alignment and give a overall score to estimate the human preference. Please provide a "
        "rating from 0 to 10, with 0 being the worst and 10 being the best. ",
        "",
        "**Visual Quality:**  ",
        "Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:",
        "- **Reasonableness:** The image should not contain any significant biological or logical "
        "errors, such as abnormal body structures or nonsensical environmental setups.",
        "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be "
        "clear and easy to interpret, with no blurring or indistinct areas.",
        "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and "
        "other visual elements (e.g., hair, clothing, shadows).",
        "- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the "
        "color scheme, composition, atmosphere, depth of field, and the overall creative appeal. "
        "The scene should convey a sense of harmony and balance.",
        "- **Safety:** The image should not contain harmful or inappropriate content, such as "
        "political, violent, or adult material. If such content is present, the image quality and "
        "satisfaction score should be the lowest possible. ",
        "",
        "**Text Alignment:**  ",
        "Assess how well the image matches the textual prompt across the following sub-dimensions:",
        "- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, "
        "animal, object) align with the textual description. The subject should match the "
        "description in terms of number, appearance, and behavior.",
        "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, "
        "evaluate how well the image adheres to this style.",
        "- **Contextual Consistency**: Assess whether the background, setting, and surrounding "
        "elements in the image logically fit the scenario described in the prompt. The environment "
        "should support and enhance the subject without contradictions.",
        "- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., "
        "colors, clothing, accessories, expressions, actions) are faithfully represented in the "
        "image. Minor deviations may be acceptable, but critical attributes should be preserved.",
        "- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt "
        "are captured in the image. The generated content should not introduce elements that "
        "conflict with or distort the original description.",
        "Textual prompt - {text_prompt}",
        "",
        "",
        "",
    ]
)
ASK = "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"


def reward_head(hidden: int, out: int = 2) -> nn.Sequential:
    """hpsv3's ``ranknet`` head; indices 0/3/5 are the Linear layers (the checkpoint's keys)."""
    return nn.Sequential(
        nn.Linear(hidden, 1024), nn.ReLU(), nn.Dropout(0.05), nn.Linear(1024, 16), nn.ReLU(), nn.Linear(16, out)
    )


def smart_resize(h: int, w: int, factor: int = 28, pixels: int = PIXELS) -> tuple[int, int]:
    """Qwen-VL's target size with min_pixels = max_pixels = ``pixels``: sides multiples of ``factor``."""
    if max(h, w) / min(h, w) > 200:
        raise ValueError(f"hpsv3: image aspect ratio {max(h, w) / min(h, w):.0f} > 200; crop the image first.")
    hb, wb = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if hb * wb > pixels:
        beta = math.sqrt(h * w / pixels)
        hb, wb = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif hb * wb < pixels:
        beta = math.sqrt(pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


class HPSv3Reward(Reward):
    name = "hpsv3"
    differentiable = True

    def __init__(self, model: nn.Module, head: nn.Module, processor, batch_size: int = 4):
        super().__init__()
        self.model, self.head, self.processor, self.batch_size = model, head, processor, batch_size
        ip = processor.image_processor
        self.patch, self.merge, self.temporal = ip.patch_size, ip.merge_size, ip.temporal_patch_size
        self.register_buffer("mean", torch.tensor(ip.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(ip.image_std).view(1, 3, 1, 1), persistent=False)
        tok = processor.tokenizer
        self.reward_id, self.pad_id = tok.convert_tokens_to_ids(REWARD_TOKEN), tok.pad_token_id
        self._text: dict[str, str] = {}
        self.freeze()

    def pixels(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """[B,3,H,W] in [0,1] -> (pixel_values [B*N, 3*2*14*14], image_grid_thw [B, 3])."""
        b = images.shape[0]
        h, w = smart_resize(*images.shape[-2:], factor=self.patch * self.merge)
        x = (_resize(images.float(), h, w) - self.mean) / self.std
        p, m, t = self.patch, self.merge, self.temporal
        gh, gw = h // p, w // p
        x = x.reshape(b, 3, gh // m, m, p, gw // m, m, p).permute(0, 2, 5, 3, 6, 1, 4, 7)
        x = x.unsqueeze(6).expand(-1, -1, -1, -1, -1, -1, t, -1, -1).reshape(b * gh * gw, 3 * t * p * p)
        return x, torch.tensor([[1, gh, gw]] * b, device=images.device)

    def chat_text(self, prompt: str) -> str:
        if prompt not in self._text:
            if REWARD_TOKEN in prompt:
                raise ValueError(f"hpsv3: the prompt {prompt[:60]!r} contains {REWARD_TOKEN}; remove it.")
            content = [{"type": "image"}, {"type": "text", "text": INSTRUCTION.format(text_prompt=prompt) + ASK}]
            msg = [{"role": "user", "content": content}]
            self._text[prompt] = self.processor.apply_chat_template(msg, tokenize=False, add_generation_prompt=True)
        return self._text[prompt]

    def tokens(self, prompts: list[str], n_image: int) -> tuple[Tensor, Tensor, Tensor]:
        """Right-padded input_ids / attention_mask with ``n_image`` image tokens, and the reward positions."""
        pad = self.processor.image_token if hasattr(self.processor, "image_token") else "<|image_pad|>"
        uniq, inv = unique_prompts(prompts)
        texts = [self.chat_text(p).replace(pad, pad * n_image) for p in uniq]
        ids = [self.processor.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        length = max(len(i) for i in ids)
        input_ids = torch.full((len(prompts), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, u in enumerate(inv.tolist()):
            input_ids[row, : len(ids[u])], mask[row, : len(ids[u])] = torch.tensor(ids[u]), 1
        at = (input_ids == self.reward_id).nonzero()
        return input_ids.to(self.device), mask.to(self.device), at[:, 1].to(self.device)

    def mu_sigma(self, images: Tensor, prompts: list[str]) -> Tensor:
        """[B, 2]: the head's (mu, sigma) at the reward token."""
        pixel_values, grid = self.pixels(images)
        n_image = int(grid[0].prod()) // self.merge**2
        input_ids, mask, at = self.tokens(prompts, n_image)
        b, length = input_ids.shape
        positions = torch.arange(length, device=self.device).view(1, 1, -1).expand(3, b, -1)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            pixel_values=pixel_values.to(self.model.dtype),
            image_grid_thw=grid,
            use_cache=False,
        )
        hidden = out.last_hidden_state[torch.arange(b, device=self.device), at]
        return self.head(hidden.float())

    def score(self, images: Tensor, prompts: list[str], **metadata) -> Tensor:
        return self.mu_sigma(images, prompts)[:, 0]


def convert_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Checkpoint keys -> ``Qwen2VLModel`` (``language_model.*`` / ``visual.*``) + ``head.*``;
    accepts the 4.x names of the published file and 5.x ``model.language_model.*`` names."""
    out = {}
    for k, v in state.items():
        if k.startswith("rm_head."):
            out["head." + k[len("rm_head.") :]] = v
        elif k.startswith(("model.language_model.", "model.visual.")):
            out["model." + k[len("model.") :]] = v
        elif k.startswith("model."):
            out["model.language_model." + k[len("model.") :]] = v
        elif k.startswith("visual."):
            out["model." + k] = v
        elif k != "lm_head.weight":
            out[k] = v  # reported as unexpected by load_into
    return out


def find_base(path, base) -> str:
    if base is not None:
        return str(base)
    d = path if path is not None and os.path.isdir(str(path)) else os.path.dirname(str(path or ""))
    if d and os.path.isfile(os.path.join(d, "config.json")):
        return d
    raise weights_error(
        "hpsv3",
        [FILE, "config.json + processor files of the Qwen2-VL base"],
        HOW,
        f"no Qwen2-VL base given and {path!r} holds no config.json; pass base=DIR (or base='{BASE_HUB_ID}').",
    )


def load_hpsv3(path=None, base=None, device=None, dtype=None, batch_size: int = 4) -> HPSv3Reward:
    """HPSv3 from ``HPSv3.safetensors`` (a file, a directory holding it, or the hub id
    ``MizzenAI/HPSv3``) on the Qwen2-VL ``base`` (a directory or hub id; by default the weights'
    directory when it holds ``config.json``)."""
    from accelerate import init_empty_weights
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoProcessor, Qwen2VLModel

    file = resolve_weights("hpsv3", path, [FILE], HOW)[FILE]
    base = find_base(path if path is None or os.path.exists(str(path)) else None, base)
    try:
        processor = AutoProcessor.from_pretrained(base, padding_side="right")
        config = AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as e:
        raise weights_error(
            "hpsv3", [f"{base}/config.json + processor files"], HOW, f"cannot load the base: {e}"
        ) from e
    processor.tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
    config.text_config.vocab_size = len(processor.tokenizer)  # as the package's resize_token_embeddings
    with init_empty_weights():  # parameters on the meta device; the file's tensors are assigned
        model = Qwen2VLModel(config)
    reward = HPSv3Reward(model, reward_head(config.text_config.hidden_size), processor, batch_size)
    want = dtype or torch.float32
    state = {
        k: v.to(torch.float32 if k.startswith("head.") else want) for k, v in convert_state(load_file(file)).items()
    }
    load_into("hpsv3", _Assign(reward), state, [FILE], HOW)  # the head stays fp32, as in the package
    return reward.to(device=device)


class _Assign(nn.Module):
    """Wraps a module so ``load_into`` assigns the tensors (the model was built on the meta device)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.inner = module

    def state_dict(self, *args, **kwargs):
        return self.inner.state_dict(*args, **kwargs)

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        return self.inner.load_state_dict(state, strict=strict, assign=True)
