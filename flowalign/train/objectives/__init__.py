"""Training objectives: what the UPDATE phase computes for one (micro-batch, trained step) unit.

``OBJECTIVES[kind]`` is an ``Objective``: ``build(inputs, options) -> unit`` with
``unit(rows, j, advantages [b], mask [b]) -> LossOut``, built once per iteration after credit and
called by the update phase (which owns accumulation, clipping and stepping), plus its options
dataclass (``objective.options`` in the config, typed by ``objective.kind``) and its check.

* ``flow_grpo`` (``flow_grpo.py``): Flow-GRPO's clipped log-prob ratio + KL (arXiv 2505.05470);
* ``nft`` (``nft.py``): DiffusionNFT's forward-process objective (arXiv 2509.16117);
* ``grpo_guard`` (``grpo_guard.py``): GRPO-Guard's per-step ratio normalisation and gradient
  reweighting on Flow-GRPO's objective (arXiv 2510.22319).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .common import Unit, UnitInputs
from .flow_grpo import FlowGRPOOptions, flow_grpo_unit
from .grpo_guard import GRPOGuardOptions, check_grpo_guard, grpo_guard_unit
from .nft import NFTOptions, check_nft, nft_unit


@dataclass(frozen=True)
class Objective:
    build: Callable[[UnitInputs, Any], Unit]  # (inputs, options) -> unit(rows, j, adv, mask) -> LossOut
    options: type  # its options dataclass (``objective.options``)
    check: Callable[[Any, Any], None] | None = None  # (options, config) -> None or one ValueError


OBJECTIVES: dict[str, Objective] = {
    "flow_grpo": Objective(flow_grpo_unit, FlowGRPOOptions),
    "nft": Objective(nft_unit, NFTOptions, check_nft),
    "grpo_guard": Objective(grpo_guard_unit, GRPOGuardOptions, check_grpo_guard),
}


def objective_kind(kind: str) -> Objective:
    if kind not in OBJECTIVES:
        raise ValueError(f"objective.kind={kind!r} is unknown; choose one of {list(OBJECTIVES)}.")
    return OBJECTIVES[kind]


__all__ = ["OBJECTIVES", "Objective", "Unit", "UnitInputs", "objective_kind"]
