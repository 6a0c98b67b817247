"""Named configurations (``flowalign train <preset>``): plain functions that build on each other and never
name a GPU count (``config.derived`` turns them into per-device numbers).

* ``testbed`` (default): Flow-GRPO-Fast on the embedded shapes-world pipeline, sized for a CPU;
* ``sd35_pickscore``, ``sd35_compositional``, ``flux_hpsv2``: the Flow-GRPO paper recipes (``recipes.py``);
* ``qwenimage_pickscore``, ``qwenimage_edit_clip``, ``flux_kontext_clip``, ``wan_t2v_pickscore``: flow_grpo's
  Qwen-Image / Qwen-Image-Edit / Kontext / Wan 2.1 configs (rewards we lack replaced, as each says), and
  ``flux2_klein_pickscore`` (no peer recipe: the SD3.5 PickScore settings on FLUX.2 [klein] base 4B);
* ``testbed_<variant>``: the credit / exploration variants of issue 6 on the testbed (DenseGRPO,
  TP-GRPO, G^2RPO, BranchGRPO, TreeGRPO, Euphonium, MixGRPO window, artifact regulariser) and the
  DiffusionNFT objective (``testbed_nft``), each a few overrides of ``testbed`` so that comparisons
  change one thing.

``get_preset(name)`` returns a fresh ``Config``.
"""

from collections.abc import Callable

from .. import overrides
from .config import Config
from .recipes import (
    flux2_klein_pickscore,
    flux_hpsv2,
    flux_kontext_clip,
    qwenimage_edit_clip,
    qwenimage_pickscore,
    sd35_compositional,
    sd35_pickscore,
    wan_t2v_pickscore,
)
from .testbed_presets import (
    testbed,
    testbed_ac_flow,
    testbed_artifact_reg,
    testbed_branchgrpo,
    testbed_dense,
    testbed_dense_psi,
    testbed_direct_align,
    testbed_draft,
    testbed_dragon,
    testbed_dynamic_treerpo,
    testbed_euphonium,
    testbed_g2rpo,
    testbed_gardo,
    testbed_mixgrpo,
    testbed_nft,
    testbed_par,
    testbed_pref_grpo,
    testbed_r0,
    testbed_refl,
    testbed_tempflow_grpo,
    testbed_treegrpo,
    testbed_turning_point,
)

PRESETS: dict[str, Callable[[], Config]] = {
    "testbed": testbed,
    "sd35_pickscore": sd35_pickscore,
    "sd35_compositional": sd35_compositional,
    "flux_hpsv2": flux_hpsv2,
    "qwenimage_pickscore": qwenimage_pickscore,
    "qwenimage_edit_clip": qwenimage_edit_clip,
    "flux_kontext_clip": flux_kontext_clip,
    "flux2_klein_pickscore": flux2_klein_pickscore,
    "wan_t2v_pickscore": wan_t2v_pickscore,
    "testbed_dense": testbed_dense,
    "testbed_dense_psi": testbed_dense_psi,
    "testbed_turning_point": testbed_turning_point,
    "testbed_g2rpo": testbed_g2rpo,
    "testbed_branchgrpo": testbed_branchgrpo,
    "testbed_treegrpo": testbed_treegrpo,
    "testbed_euphonium": testbed_euphonium,
    "testbed_mixgrpo": testbed_mixgrpo,
    "testbed_artifact_reg": testbed_artifact_reg,
    "testbed_nft": testbed_nft,
    "testbed_par": testbed_par,
    "testbed_pref_grpo": testbed_pref_grpo,
    "testbed_draft": testbed_draft,
    "testbed_refl": testbed_refl,
    "testbed_direct_align": testbed_direct_align,
    "testbed_dragon": testbed_dragon,
    "testbed_r0": testbed_r0,
    "testbed_ac_flow": testbed_ac_flow,
    "testbed_tempflow_grpo": testbed_tempflow_grpo,
    "testbed_gardo": testbed_gardo,
    "testbed_dynamic_treerpo": testbed_dynamic_treerpo,
}


def get_preset(name: str) -> Config:
    """A fresh ``Config`` of the preset ``name`` (one clear error naming the valid presets)."""
    return overrides.get_preset(PRESETS, name)
