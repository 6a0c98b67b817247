"""Rewards: one contract (``base.Reward``), one file per scorer, a weighted ``MultiReward``, reward
ladders of intermediate states (``ladder``) and background scoring (``background``).

``REWARDS`` maps names to factories; ``load_reward(name, path=..., **kwargs)`` builds one. Factories
import their heavy dependencies (open_clip, transformers, timm) only when called, and touch the
network only when given a hub id. Weight files each scorer expects (``path`` may be a directory
holding them; a missing or wrong file is one ``RewardWeightsError`` that lists them):

| name | files | module |
|---|---|---|
| ``hpsv2`` | ``HPS_v2.1_compressed.pt`` (or v2.0 with ``version="v2.0"``) | hpsv2.py |
| ``imagereward`` | ``ImageReward.pt``, ``med_config.json``, ``vocab.txt`` | imagereward.py |
| ``pickscore`` | CLIPModel dir + CLIPProcessor dir (``processor=``) | pickscore.py |
| ``clip`` | open_clip checkpoint (``arch=``, default ViT-L-14) | clip.py |
| ``aesthetic`` | ``sac+logos+ava1-l14-linearMSE.pth`` + ``clip=`` open_clip ViT-L-14 | aesthetic.py |
| ``artifact`` | ``artifact_head.safetensors`` + ``clip=`` backbone weights | artifact.py |
| ``compositional``, ``testbed_aesthetic``, ``testbed_artifact`` | testbed assets (default dir) | testbed.py |
| ``ocr`` | none: PP-OCRv4 ONNX inside ``rapidocr-onnxruntime`` (``flowalign[ocr]``) | ocr.py |
| ``remote:URL`` | none: a reward served by ``flowalign serve-reward NAME`` at URL | remote.py, serve.py |
| ``vlm_judge``, ``vlm_pairwise`` | none: ``url=`` of an OpenAI-compatible chat server | judge.py |
| ``geneval_testbed`` | testbed checker; GenEval metadata columns | geneval.py |
| ``nudenet_safety`` | none: the detector inside the ``nudenet`` wheel | safety.py |
"""

from __future__ import annotations

from .base import Reward, RewardWeightsError, preprocess
from .multi import MultiReward
from .registry import REWARDS, load_reward

__all__ = ["REWARDS", "MultiReward", "Reward", "RewardWeightsError", "load_reward", "preprocess"]
