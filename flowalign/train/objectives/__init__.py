"""Training objectives: what the UPDATE phase computes for one (micro-batch, trained step) unit.

``OBJECTIVES[kind]`` is an ``Objective``: ``build(inputs, options) -> unit`` with
``unit(rows, j, advantages [b], mask [b]) -> LossOut``, built once per iteration after credit and
called by the update phase (which owns accumulation, clipping and stepping), plus its options
dataclass (``objective.options`` in the config, typed by ``objective.kind``) and its check.

* ``flow_grpo`` (``flow_grpo.py``): Flow-GRPO's clipped log-prob ratio + KL (arXiv 2505.05470);
* ``nft`` (``nft.py``): DiffusionNFT's forward-process objective (arXiv 2509.16117);
* ``grpo_guard`` (``grpo_guard.py``): GRPO-Guard's per-step ratio normalisation and gradient
  reweighting on Flow-GRPO's objective (arXiv 2510.22319);
* ``draft`` / ``refl`` / ``direct_align`` (own files, shared helpers in ``reward_grad.py``): reward
  backpropagation through the last K steps (DRaFT-K, arXiv 2309.17400), through one x0 prediction at
  a random late step (ReFL, arXiv 2304.05977), or at any step by noise injection and interpolation
  (Direct-Align, arXiv 2509.06942); they ignore the advantages (``credit.kind=grpo``, unused);
* ``dragon`` (``dragon.py``): DRAGON's positive / negative sets by a set-level reward (mean reward +
  log Vendi diversity) and a KTO-style contrast on them (arXiv 2504.15217);
* ``r0`` (``r0.py``): R0's few-step generator by regularised reward maximisation, no distillation
  loss (arXiv 2503.13070);
* ``gardo`` (``gardo.py``): GARDO's KL on the credit's uncertain rows only, to a reference refreshed
  to the policy every N iterations (arXiv 2512.24138);
* ``dynamic_treerpo`` (``dynamic_treerpo.py``): Dynamic-TreeRPO's LayerTuning-RL, an advantage-weighted
  SFT term and per-row adaptive clip bounds (arXiv 2509.23352).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .common import Unit, UnitInputs
from .direct_align import DirectAlignOptions, check_direct_align, direct_align_unit
from .draft import DRaFTOptions, check_draft, draft_unit
from .dragon import DragonOptions, check_dragon, dragon_unit
from .dynamic_treerpo import DynamicTreeRPOOptions, check_dynamic_treerpo, dynamic_treerpo_unit
from .flow_grpo import FlowGRPOOptions, flow_grpo_unit
from .gardo import GARDOObjectiveOptions, check_gardo_objective, gardo_unit
from .grpo_guard import GRPOGuardOptions, check_grpo_guard, grpo_guard_unit
from .nft import NFTOptions, check_nft, nft_unit
from .r0 import R0Options, check_r0, r0_unit
from .refl import ReFLOptions, check_refl, refl_unit


@dataclass(frozen=True)
class Objective:
    build: Callable[[UnitInputs, Any], Unit]  # (inputs, options) -> unit(rows, j, adv, mask) -> LossOut
    options: type  # its options dataclass (``objective.options``)
    check: Callable[[Any, Any], None] | None = None  # (options, config) -> None or one ValueError


OBJECTIVES: dict[str, Objective] = {
    "flow_grpo": Objective(flow_grpo_unit, FlowGRPOOptions),
    "nft": Objective(nft_unit, NFTOptions, check_nft),
    "grpo_guard": Objective(grpo_guard_unit, GRPOGuardOptions, check_grpo_guard),
    "draft": Objective(draft_unit, DRaFTOptions, check_draft),
    "refl": Objective(refl_unit, ReFLOptions, check_refl),
    "direct_align": Objective(direct_align_unit, DirectAlignOptions, check_direct_align),
    "dragon": Objective(dragon_unit, DragonOptions, check_dragon),
    "r0": Objective(r0_unit, R0Options, check_r0),
    "gardo": Objective(gardo_unit, GARDOObjectiveOptions, check_gardo_objective),
    "dynamic_treerpo": Objective(dynamic_treerpo_unit, DynamicTreeRPOOptions, check_dynamic_treerpo),
}


def objective_kind(kind: str) -> Objective:
    if kind not in OBJECTIVES:
        raise ValueError(f"objective.kind={kind!r} is unknown; choose one of {list(OBJECTIVES)}.")
    return OBJECTIVES[kind]


__all__ = ["OBJECTIVES", "Objective", "Unit", "UnitInputs", "objective_kind"]
