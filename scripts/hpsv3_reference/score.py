"""Score images with the ``hpsv3`` package's own inference code (run inside the venv that
``make_venv.sh`` builds: hpsv3==1.0.0 + transformers 4.45.2).

    python score.py --base DIR --checkpoint DIR/HPSv3.safetensors --items items.json

``items.json`` is ``[{"image": "a.png", "prompt": "..."}, ...]``; prints one JSON line
``{"mu_sigma": [[mu, sigma], ...], "transformers": "4.45.2", "hpsv3": "1.0.0"}``.

The model is ``hpsv3.HPSv3RewardInferencer`` built from the package's own ``HPSv3_7B.yaml`` with
three overrides: ``model_name_or_path`` = ``--base`` (the Qwen2-VL base directory), fp32 instead of
bf16 (``bf16: false``, ``torch_dtype: float32``; an equivalence check at 1e-4 needs fp32 on both
sides) and ``report_to: none``. Its ``reward(image_paths, prompts)`` does the rest (its chat
template, ``process_vision_info``, the processor call, the forward pass and the reward-token pooling).

Stubs: importing ``hpsv3`` imports its training stack. These modules are never called on the scoring
path and are replaced in ``sys.modules`` by empty modules before the import: ``deepspeed``,
``datasets``, ``matplotlib`` (+ ``.pyplot``, ``.patches``), ``torch.utils.tensorboard``, and ``trl``,
whose two helpers the model factory does call get their documented behaviour for an unquantised
model (``get_quantization_config`` -> None when neither 4- nor 8-bit loading is asked for;
``get_kbit_device_map`` is only reached for quantised models); ``trl.RewardTrainer`` (a base class of
the package's trainer, never instantiated here) is an empty class.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import os
import sys
import tempfile
import types


def stub(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    mod.__path__ = []  # a package, so that submodule stubs import
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    sys.modules[name] = mod
    return mod


def install_stubs() -> None:
    def get_quantization_config(model_config):
        if getattr(model_config, "load_in_4bit", False) or getattr(model_config, "load_in_8bit", False):
            raise NotImplementedError("quantised loading is not part of the reference runner")
        return None

    def get_kbit_device_map():
        raise NotImplementedError("only reached for quantised models")

    stub(
        "trl",
        RewardTrainer=type("RewardTrainer", (), {}),
        get_quantization_config=get_quantization_config,
        get_kbit_device_map=get_kbit_device_map,
    )
    for name in ["deepspeed", "datasets", "matplotlib", "matplotlib.pyplot", "matplotlib.patches"]:
        stub(name, Dataset=type("Dataset", (), {}))
    stub("torch.utils.tensorboard", SummaryWriter=type("SummaryWriter", (), {}))


def config_file(base: str) -> str:
    from importlib.resources import files

    from omegaconf import OmegaConf

    cfg = OmegaConf.load(str(files("hpsv3") / "config" / "HPSv3_7B.yaml"))
    cfg.model_name_or_path = base
    cfg.bf16, cfg.torch_dtype, cfg.report_to = False, "float32", "none"
    cfg.disable_flash_attn2 = True
    fd, path = tempfile.mkstemp(suffix=".yaml")
    os.close(fd)
    OmegaConf.save(cfg, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--items", required=True)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from importlib.metadata import version

    import torch
    import transformers  # before the stubs: its optional-package probes must see the real environment

    install_stubs()
    from hpsv3 import HPSv3RewardInferencer

    torch.set_num_threads(1)
    with open(args.items) as f:
        items = json.load(f)
    path = config_file(args.base)
    try:
        inf = HPSv3RewardInferencer(config_path=path, checkpoint_path=args.checkpoint, device=args.device)
    finally:
        os.remove(path)
    with torch.no_grad():
        out = inf.reward([it["image"] for it in items], [it["prompt"] for it in items])
    result = {
        "mu_sigma": out.float().cpu().tolist(),
        "transformers": transformers.__version__,
        "hpsv3": version("hpsv3"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
