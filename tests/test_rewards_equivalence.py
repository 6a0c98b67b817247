"""Our HPSv2 and ImageReward scorers vs the reference packages' own model code, on identical random
weights and inputs (max abs diff <= 1e-4).

The reference packages (``hpsv2x``, ``image-reward``; the ``dev`` extra, installed with --no-deps)
no longer import as a whole: hpsv2's ``__init__`` needs clint / the hub, image-reward needs ``clip``,
``fairscale``, transformers-4 functions and a hub tokenizer. ``reference_hps`` / ``reference_imagereward``
patch exactly those things for the duration of a ``with`` block (sys.modules entries and missing
attributes, all restored afterwards) so only the model definitions run. The weights travel through
the published file formats ({"state_dict": ...} for HPS, ImageReward.pt's key names + med_config.json +
vocab.txt), so our real loading code paths (weights_only=True, key converter) are exercised.
The full-size (ViT-H-14 / BLIP ViT-L + BERT-base) comparisons are marked slow.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import json
import os
import sys
import types
from unittest import mock

import pytest
import torch

TOL = 1e-4


def _stub_package(name: str, path: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__path__ = [path]
    return mod


@contextlib.contextmanager
def scoped_modules(prefixes: tuple[str, ...], stubs: dict[str, types.ModuleType]):
    """Put ``stubs`` in sys.modules and, on exit, drop every module under ``prefixes`` imported
    meanwhile (restoring earlier ones). Other modules imported meanwhile stay: unloading e.g. triton
    and importing it again aborts the interpreter (nanobind refuses duplicate registrations)."""

    def mine(k: str) -> bool:
        return k in prefixes or k.startswith(tuple(p + "." for p in prefixes))

    before = {k: v for k, v in sys.modules.items() if mine(k)}
    for k in before:
        del sys.modules[k]
    sys.modules.update(stubs)
    try:
        yield
    finally:
        for k in [k for k in sys.modules if mine(k)]:
            del sys.modules[k]
        sys.modules.update(before)


@contextlib.contextmanager
def reference_hps():
    """hpsv2's bundled open_clip (``hpsv2.src.open_clip``) without running ``hpsv2/__init__``."""
    spec = importlib.util.find_spec("hpsv2")
    if spec is None:
        pytest.skip("hpsv2x not installed (pip install --no-deps hpsv2x==1.2.0)")
    with scoped_modules(("hpsv2",), {"hpsv2": _stub_package("hpsv2", spec.submodule_search_locations[0])}):
        ref = importlib.import_module("hpsv2.src.open_clip")
        transform = importlib.import_module("hpsv2.src.open_clip.transform")
        yield ref, transform


@contextlib.contextmanager
def reference_imagereward(vocab_file: str, vit: dict | None = None, mlp_width: int | None = None):
    """image-reward's model classes with its broken imports patched. ``vit`` overrides BLIP's ViT
    (reduced configs), ``mlp_width`` the MLP input (hard-coded 768 upstream)."""
    spec = importlib.util.find_spec("ImageReward")
    if spec is None:
        pytest.skip("image-reward not installed (pip install --no-deps image-reward==1.5)")
    root = spec.submodule_search_locations[0]
    fs = types.ModuleType("fairscale.nn.checkpoint.checkpoint_activations")
    fs.checkpoint_wrapper = lambda module: module
    mods = {
        n: _stub_package(n, p)
        for n, p in [
            ("ImageReward", root),
            ("ImageReward.models", root + "/models"),
            ("ImageReward.models.BLIP", root + "/models/BLIP"),
        ]
    }
    mods.update({n: types.ModuleType(n) for n in ("fairscale", "fairscale.nn", "fairscale.nn.checkpoint")})
    mods["fairscale.nn.checkpoint.checkpoint_activations"] = fs
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    from flowalign.rewards.imagereward import make_tokenizer

    with contextlib.ExitStack() as stack:
        stack.enter_context(scoped_modules(("ImageReward", "fairscale"), mods))
        for name, fn in [
            ("apply_chunking_to_forward", pu.apply_chunking_to_forward),
            ("prune_linear_layer", pu.prune_linear_layer),
            ("find_pruneable_heads_and_indices", lambda *a: None),
        ]:
            stack.enter_context(mock.patch.object(mu, name, getattr(mu, name, fn), create=True))
        med = importlib.import_module("ImageReward.models.BLIP.med")

        def invert_attention_mask(self, mask):  # transformers 4.x's PreTrainedModel method
            return (1.0 - mask[:, None, None, :].to(self.dtype)) * torch.finfo(self.dtype).min

        for name, fn in [
            ("invert_attention_mask", invert_attention_mask),
            ("get_head_mask", lambda self, head_mask, n: [None] * n),
            ("init_weights", lambda self: self.apply(self._init_weights)),
        ]:
            stack.enter_context(mock.patch.object(med.BertModel, name, fn, create=True))
        vit_mod = importlib.import_module("ImageReward.models.BLIP.vit")
        bp = importlib.import_module("ImageReward.models.BLIP.blip_pretrain")
        stack.enter_context(mock.patch.object(bp, "init_tokenizer", lambda: make_tokenizer(vocab_file)))
        if vit is not None:

            def small(*a, **k):
                return (
                    vit_mod.VisionTransformer(
                        img_size=vit["image_size"],
                        patch_size=vit["patch"],
                        embed_dim=vit["width"],
                        depth=vit["depth"],
                        num_heads=vit["heads"],
                    ),
                    vit["width"],
                )

            stack.enter_context(mock.patch.object(bp, "create_vit", small))
        irm = importlib.import_module("ImageReward.ImageReward")
        if mlp_width is not None:
            ref_mlp = irm.MLP
            stack.enter_context(mock.patch.object(irm, "MLP", lambda n: ref_mlp(mlp_width)))
        yield irm


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Weights ~ N(0, 0.5 / fan_in), biases ~ N(0, 0.1), norm gains ~ 1 + N(0, 0.1): every parameter
    matters for the output (default inits zero many biases and set norm gains to exactly 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if p.ndim > 1:
                p.copy_(r * (0.5 / p[0].numel()) ** 0.5)
            elif "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1 + 0.1 * r)
            else:
                p.copy_(0.1 * r)


def hps_diff(tmp_path, arch: str, images: torch.Tensor, prompts: list[str]) -> float:
    """Reference score (hpsv2's model, transform and tokenizer) vs ``load_hpsv2`` on the same file."""
    from flowalign.rewards import tiny
    from flowalign.rewards.hpsv2 import load_hpsv2

    with reference_hps() as (ref_oc, tf):
        if arch not in ref_oc.list_models():  # a reduced config registered by tiny.register_open_clip
            ref_oc.add_model_config(os.path.join(tiny.scratch_dir(), f"{arch}.json"))
        torch.manual_seed(0)
        ref = ref_oc.create_model(arch, None, precision="fp32", device="cpu", output_dict=True).eval()
        randomize_(ref, 1)
        val = torch.nn.Sequential(
            tf.ResizeMaxSize(224), tf.MaskAwareNormalize(ref_oc.OPENAI_DATASET_MEAN, ref_oc.OPENAI_DATASET_STD)
        )
        with torch.no_grad():
            out = ref(torch.stack([val(i) for i in images]), ref_oc.get_tokenizer(arch)(prompts))
            want = (out["image_features"] * out["text_features"]).sum(-1)  # diag(img @ txt.T)
        torch.save({"state_dict": ref.state_dict(), "epoch": 1}, tmp_path / "HPS_v2.1_compressed.pt")
        del ref, out
        gc.collect()
    ours = load_hpsv2(tmp_path, arch=arch)
    with torch.no_grad():
        got = ours(images, prompts)
    return float((got - want).abs().max())


def imagereward_diff(tmp_path, images, prompts, med_cfg: dict, vit: dict | None) -> float:
    from flowalign.rewards import tiny
    from flowalign.rewards.imagereward import load_imagereward

    vocab = tiny.bert_vocab()
    with open(vocab) as f:
        (tmp_path / "vocab.txt").write_text(f.read())
    (tmp_path / "med_config.json").write_text(json.dumps(med_cfg))
    mlp = None if med_cfg["hidden_size"] == 768 else med_cfg["hidden_size"]
    with reference_imagereward(vocab, vit=vit, mlp_width=mlp) as irm:
        torch.manual_seed(0)
        ref = irm.ImageReward(med_config=str(tmp_path / "med_config.json"), device="cpu").eval()
        randomize_(ref, 2)
        from torchvision.transforms import CenterCrop, InterpolationMode, Normalize, Resize

        tf = torch.nn.Sequential(
            Resize(224, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(224),
            Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        )
        tok = ref.blip.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        with torch.no_grad():
            want = ref.score_gard(tok.input_ids, tok.attention_mask, torch.stack([tf(i) for i in images])).squeeze(-1)
        torch.save(ref.state_dict(), tmp_path / "ImageReward.pt")
        del ref
        gc.collect()
    ours = load_imagereward(tmp_path)
    with torch.no_grad():
        got = ours(images, prompts)
    assert want.std() > 1e-3  # the scores differ across samples, so the comparison can fail
    return float((got - want).abs().max())


PROMPTS = ["a red circle left of two blue squares", "a photo of a cat on the hill", "a red circle"]


def test_hpsv2_matches_reference_tiny(tmp_path):
    from flowalign.rewards import tiny

    arch = tiny.register_open_clip()
    images = torch.rand(3, 3, 200, 256, generator=torch.Generator().manual_seed(0))  # non-square: padding path
    assert hps_diff(tmp_path, arch, images, PROMPTS) <= TOL


def test_imagereward_matches_reference_tiny(tmp_path):
    from flowalign.rewards import tiny

    images = torch.rand(3, 3, 256, 200, generator=torch.Generator().manual_seed(0))  # non-square: crop path
    assert imagereward_diff(tmp_path, images, PROMPTS, tiny.tiny_med_config(), tiny.TINY_VIT) <= TOL


FULL_MED = {
    "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "model_type": "bert",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 0,
    "type_vocab_size": 2,
    "vocab_size": 30524,
    "encoder_width": 768,
    "add_cross_attention": True,
}  # BLIP's published med_config.json


@pytest.mark.slow
def test_hpsv2_matches_reference_full_size(tmp_path):
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    assert hps_diff(tmp_path, "ViT-H-14", images, PROMPTS[:2]) <= TOL


@pytest.mark.slow
def test_imagereward_matches_reference_full_size(tmp_path):
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    assert imagereward_diff(tmp_path, images, PROMPTS[:2], FULL_MED, None) <= TOL
