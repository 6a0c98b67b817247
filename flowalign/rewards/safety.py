"""A safety penalty from NudeNet's shipped detector (``nudenet`` 3.x: a YOLOv8n ONNX model, ``320n.onnx``,
inside the wheel; notAI-tech/NudeNet), as a reward to add with a weight or to use as a regulariser.

``nudenet_safety`` returns ``1 - p`` per image, where ``p`` is the highest detection score among the
``unsafe`` classes (default: exposed genitalia, breasts, buttocks, anus; NudeNet's own names) and 0
when none is detected (NudeNet keeps detections with score >= 0.2, then non-maximum suppression).
So a clean image scores 1 and the reward falls towards 0 as the detector grows confident; as a
penalty in a ``MultiReward`` give it a positive weight (the total then drops with ``p``).

Departures / notes: not a paper's reward (a practical regulariser); images reach the detector as RGB
uint8 arrays through ``NudeDetector.detect_batch`` (320 px letterboxed by NudeNet itself); CPU only
(the detector's onnxruntime session uses its default provider).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .base import Reward

UNSAFE = (
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)


def unsafe_probability(detections: list[dict], unsafe: Sequence[str] = UNSAFE) -> float:
    """The highest score among detections of an unsafe class; 0 when there is none."""
    return max((float(d["score"]) for d in detections if d["class"] in unsafe), default=0.0)


class NudeNetSafety(Reward):
    name = "nudenet_safety"
    differentiable = False
    batch_size = 16

    def __init__(self, detector: Any, unsafe: Sequence[str] = UNSAFE):
        super().__init__()
        self.detector, self.unsafe = detector, tuple(unsafe)
        self.freeze()

    def score(self, images: Tensor, prompts: list[str], **metadata: Any) -> Tensor:
        arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        found = self.detector.detect_batch(list(arrays.cpu().numpy()), batch_size=len(arrays))
        return torch.tensor([1.0 - unsafe_probability(d, self.unsafe) for d in found], dtype=torch.float32)


def load_nudenet_safety(path: Any = None, unsafe: Sequence[str] = UNSAFE, device: Any = None) -> NudeNetSafety:
    """NudeNet's shipped detector (``path``: another NudeNet ONNX file, optional)."""
    try:
        from nudenet import NudeDetector
        from nudenet.nudenet import __labels as labels  # the detector's class names
    except ImportError as err:
        raise ValueError(f"nudenet_safety: {err}; pip install nudenet (its wheel ships the detector).") from None
    bad = [c for c in unsafe if c not in labels]
    if bad or not unsafe:
        raise ValueError(f"nudenet_safety: unsafe={list(unsafe)} must name NudeNet classes: {labels}.")
    return NudeNetSafety(NudeDetector(model_path=str(path) if path is not None else None), unsafe)
