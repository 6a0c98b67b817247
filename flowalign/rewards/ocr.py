"""OCR reward for text rendering: Flow-GRPO's (arXiv 2505.05470, task "visual text rendering";
code ``flow_grpo/ocr.py``) definition on the PP-OCRv4 detection + recognition ONNX models that the
``rapidocr-onnxruntime`` wheel ships (``pip install flowalign[ocr]``; nothing is downloaded).

The target is the text between the first pair of double quotes in the prompt (``a sign that says
"OPEN 24 HOURS"`` -> ``OPEN 24 HOURS``). The image is read by the OCR model; the recognised lines
(score >= ``text_score``, top-to-bottom then left-to-right) are concatenated. Both strings are
lower-cased and their spaces removed; then

    d = 0 if target is a substring of recognised else Levenshtein(recognised, target)
    reward = 1 - min(d, len(target)) / len(target)            in [0, 1]

(floored at 0 through the ``min``: many unrelated characters cost at most the whole target).

Departures from the flow_grpo code:
  * the OCR model: PP-OCRv4 (det + rec) run by onnxruntime through rapidocr, instead of PaddleOCR's
    PP-OCR English models run by paddle; no angle classifier (flow_grpo: ``use_angle_cls=False``);
  * images go to the model as BGR uint8 (the PP-OCR training convention; flow_grpo hands PaddleOCR
    RGB arrays); the detector's resize is rapidocr's (shorter side up to ``det_limit_side_len``,
    default 736) rather than PaddleOCR's (longer side down to 960);
  * a prompt without quoted text (or with ``""``) is one ValueError, not an IndexError; curly
    quotes (U+201C / U+201D) are accepted as double quotes too;
  * an OCR failure inside a batch is not turned into reward 0: it raises (the trainer retries the
    batch, then masks and counts it);
  * batched: detection runs per image, recognition once over the text crops of the whole batch.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from .base import Reward

QUOTED = re.compile(r"[\"\u201c\u201d]([^\"\u201c\u201d]*)[\"\u201c\u201d]")
ENGINE_API = ("preprocess", "maybe_add_letterbox", "auto_text_det", "get_crop_img_list")  # rapidocr >= 1.4
HOW = "install the OCR extra: pip install 'flowalign[ocr]' (rapidocr-onnxruntime ships the PP-OCRv4 models)"


def ocr_target(prompt: str) -> str:
    """The text between the first pair of double quotes; one ValueError when there is none."""
    m = QUOTED.search(prompt)
    if m is None or not m.group(1).strip():
        raise ValueError(
            f"ocr: prompt {prompt!r} has no quoted text; an OCR prompt names the text to render in double "
            f"quotes, e.g. 'a shop sign that says \"OPEN 24 HOURS\"'."
        )
    return m.group(1)


def normalise(text: str) -> str:
    """flow_grpo's normalisation: lower case, spaces removed (other whitespace kept)."""
    return text.replace(" ", "").lower()


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions each cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def ocr_score(recognised: str, target: str) -> float:
    """1 - min(d, len) / len on the normalised strings; d = 0 when the target is contained."""
    rec, tgt = normalise(recognised), normalise(target)
    if not tgt:
        raise ValueError(f"ocr: target {target!r} is empty after removing spaces; quote at least one character.")
    d = 0 if tgt in rec else edit_distance(rec, tgt)
    return 1.0 - min(d, len(tgt)) / len(tgt)


class OCRReward(Reward):
    """Flow-GRPO's OCR reward on rapidocr's PP-OCRv4 models; see the module docstring."""

    name = "ocr"
    differentiable = False
    batch_size = 16

    def __init__(self, engine: Any, text_score: float = 0.5):
        super().__init__()
        self.engine, self.text_score = engine, float(text_score)
        self.freeze()

    def score(self, images: Tensor, prompts: list[str], **metadata: Any) -> Tensor:
        targets = [ocr_target(p) for p in prompts]
        texts = self.recognise(images)
        return torch.tensor([ocr_score(t, g) for t, g in zip(texts, targets)], dtype=torch.float32)

    @torch.no_grad()
    def recognise(self, images: Tensor) -> list[str]:
        """[B, 3, H, W] in [0, 1] -> the recognised text of each image (lines joined, no separator)."""
        arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        arrays = arrays.flip(1).permute(0, 2, 3, 1).cpu().numpy()  # RGB -> BGR, HWC
        crops, owner = [], []
        for i, img in enumerate(arrays):
            for crop in self._crops(img):
                crops.append(crop)
                owner.append(i)
        texts = [""] * len(arrays)
        if crops:
            results, _ = self.engine.text_rec(crops)
            for i, (text, conf, *_) in zip(owner, results):
                if float(conf) >= self.text_score:
                    texts[i] += text
        return texts

    def _crops(self, img: Any) -> list[Any]:
        """rapidocr's own detection path for one BGR image: resize, letterbox, detect, sort, crop."""
        eng = self.engine
        img, _, _ = eng.preprocess(img)
        img, _ = eng.maybe_add_letterbox(img, {})
        boxes, _ = eng.auto_text_det(img)
        return [] if boxes is None else eng.get_crop_img_list(img, boxes)


def load_ocr(
    path: Any = None,
    device: Any = None,
    text_score: float = 0.5,
    det_limit_side_len: int = 736,
    threads: int = -1,
    batch_size: int = 16,
) -> OCRReward:
    """The OCR reward on the PP-OCRv4 models inside the rapidocr wheel (``path``: not used, the models
    ship with the package). ``device`` cuda needs onnxruntime-gpu; ``threads`` -1 = onnxruntime's
    default (all cores)."""
    if path is not None:
        raise ValueError(f"ocr: path={path!r} is not used; the PP-OCRv4 models ship inside rapidocr-onnxruntime.")
    if not 0.0 <= float(text_score) <= 1.0:
        raise ValueError(f"ocr: text_score={text_score!r}; use a recognition confidence in [0, 1].")
    if int(det_limit_side_len) < 32 or int(batch_size) < 1:
        raise ValueError(f"ocr: det_limit_side_len={det_limit_side_len} (>= 32) / batch_size={batch_size} (>= 1).")
    try:
        import onnxruntime
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as err:
        raise ValueError(f"ocr: {err}; {HOW}.") from None
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise ValueError(f"ocr: device={device!r} needs onnxruntime-gpu (CUDAExecutionProvider); use device='cpu'.")
    engine = RapidOCR(
        det_limit_side_len=int(det_limit_side_len),
        det_use_cuda=cuda,
        rec_use_cuda=cuda,
        intra_op_num_threads=int(threads),
        inter_op_num_threads=int(threads),
        text_score=float(text_score),
    )
    missing = [m for m in ENGINE_API if not callable(getattr(engine, m, None))]
    if missing or not callable(getattr(engine, "text_rec", None)):
        raise ValueError(f"ocr: this rapidocr-onnxruntime lacks {missing}; pip install 'rapidocr-onnxruntime>=1.4'.")
    reward = OCRReward(engine, text_score)
    reward.batch_size = int(batch_size)
    return reward
