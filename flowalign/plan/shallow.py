"""A deep transformer's traced FLOPs and activation peak from a shallow copy, exactly.

A transformer's blocks come in runs of identical blocks (SD3.5-M: 13 dual-attention joint blocks, 10
joint blocks, the context-pre-only last one; Flux: 19 double-stream and 38 single-stream blocks; Wan,
Qwen-Image: one run). ``shallow_layout`` keeps the first three blocks of every run (all of a shorter
run) and the model's last block, and ``reduce_config`` writes the config of that shallow model (SD3.5-M:
7 blocks, Flux: 7). One fake-tensor pass of the shallow model is cut at every block into segments (``Meter.mark``): in
the forward at each block's output (the segment: the ops since the previous block's output, then the
block), in the backward when the gradient of a block's output arrives (the segment: that block's
backward, recomputed forward included, and the ops between it and the block before). Each segment
has its FLOPs, its net change of live bytes and its rise above its start. The deep model's pass is
the same sequence with the third block's segments repeated for the 4th .. of each run (but the last), so
``extrapolate`` replays it: FLOPs are the sum, the peak is the maximum over segments of the live bytes
at their start plus their rise. This is exact as long as every later block of a run behaves as the
third (same shapes, same saved tensors); ``tests/test_plan.py`` compares it with full traces (the
testbed, a 6 + 5-block Flux, and SD3.5-M / FLUX.1-dev under ``slow``).

Where the model's blocks cannot be cut so (an unknown class, a block whose outputs need no
gradient, a shallow config that does not build the kept blocks), ``count.trace`` traces the full model.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# blocks kept per run: the model's first block takes the embedders' output, the second still differs
# from the rest (the testbed without gradient checkpointing keeps 2.6 MB less for it: one fp32 copy of
# both streams), from the third on every block's segments are the same, except the model's last block,
# whose backward follows the head's (a 6 + 5-block Flux at 256 px: 6.3 MB less kept, 6.5 MB less rise)
KEEP = 3
# the config key holding each block list's length, per transformer class
DEPTH_KEYS = {
    "SD3Transformer2DModel": {"transformer_blocks": "num_layers"},
    "FluxTransformer2DModel": {"transformer_blocks": "num_layers", "single_transformer_blocks": "num_single_layers"},
    "Flux2Transformer2DModel": {"transformer_blocks": "num_layers", "single_transformer_blocks": "num_single_layers"},
    "QwenImageTransformer2DModel": {"transformer_blocks": "num_layers"},
    "WanTransformer3DModel": {"blocks": "num_layers"},
}


@dataclass
class Layout:
    """The blocks of a model in execution order as (list name, index), and for the deep model the
    shallow block each one is replayed from (``rep``)."""

    blocks: list[tuple[str, int]]
    keep: list[tuple[str, int]] = field(default_factory=list)  # the deep blocks the shallow model keeps
    rep: list[int] = field(default_factory=list)  # deep block -> position in ``keep``


def block_lists(model) -> list[tuple[str, object]]:
    import torch

    return [(n, m) for n, m in model.named_children() if isinstance(m, torch.nn.ModuleList)]


def _signature(block) -> tuple:
    return tuple((n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in block.named_parameters())


def shallow_layout(model) -> Layout:
    """Runs of blocks with the same parameters (names, shapes, dtypes, trainability), the first
    ``KEEP`` of each kept, and the model's last block; ``rep`` maps every deep block to its kept twin
    (the i-th of a run to the i-th kept, the later ones to the run's last kept, the model's last block
    to itself)."""
    blocks, sigs = [], []
    for name, lst in block_lists(model):
        for i, block in enumerate(lst):
            blocks.append((name, i))
            sigs.append((name, _signature(block)))
    layout, position = Layout(blocks), 0
    for p, sig in enumerate(sigs):
        position = position + 1 if p > 0 and sigs[p - 1] == sig else 0
        if position < KEEP:
            layout.keep.append(blocks[p])
        layout.rep.append(len(layout.keep) - 1)
    if blocks and layout.keep[-1] != blocks[-1]:  # the model's last block: the first one backward
        layout.keep.append(blocks[-1])
        layout.rep[-1] = len(layout.keep) - 1
    return layout


def reduce_config(spec, layout: Layout):
    """The ``Spec`` of the shallow model keeping ``layout.keep`` (None: the class is not known here)."""
    from .build import Spec

    keys = DEPTH_KEYS.get(spec.class_name)
    if keys is None:
        return None
    config = dict(spec.config)
    for name, key in keys.items():
        config[key] = sum(1 for n, _ in layout.keep if n == name)
    if spec.class_name == "SD3Transformer2DModel":
        dual = set(spec.config.get("dual_attention_layers") or [])
        kept = [i for n, i in layout.keep if n == "transformer_blocks"]
        config["dual_attention_layers"] = [j for j, i in enumerate(kept) if i in dual]
    return Spec(f"{spec.name} (shallow)", spec.hub_id, config, spec.vae_factor, spec.components)


def _base(block) -> list:
    """A block's weights without LoRA adapters (peft renames a wrapped ``x.weight`` ``x.base_layer.weight``)."""
    return [(n.replace(".base_layer", ""), p.shape) for n, p in block.named_parameters() if "lora_" not in n]


def same_blocks(deep, shallow, layout: Layout) -> bool:
    """The shallow model's blocks are the kept deep ones (the same base weights; ``deep`` is built bare,
    ``shallow`` as the preset trains it), and its runs start where the kept deep ones do (adapters
    alike within a run)."""
    small = shallow_layout(shallow).blocks
    if len(small) != len(layout.keep):
        return False
    lists_deep, lists_small = dict(block_lists(deep)), dict(block_lists(shallow))
    pairs = zip(layout.keep, small, strict=True)
    if any(_base(lists_deep[n][i]) != _base(lists_small[m][j]) for (n, i), (m, j) in pairs):
        return False
    sigs = [(m, _signature(lists_small[m][j])) for m, j in small]
    starts = [p for p in range(len(small)) if p == 0 or sigs[p] != sigs[p - 1]]
    deep_sigs = [(n, _signature(lists_deep[n][i])) for n, i in layout.keep]
    return starts == [p for p in range(len(small)) if p == 0 or deep_sigs[p] != deep_sigs[p - 1]]


def _stats(named) -> Counter:
    out = Counter()
    for name, p in named:
        n, size = p.numel(), p.numel() * p.element_size()
        out["params"] += n
        out["base"] += 0 if "lora_" in name else n
        if p.requires_grad:
            out["trainable_params"] += n
            out["trainable_bytes"] += size
        else:
            out["frozen_bytes"] += size
    return out


def replayed_sizes(deep, shallow, layout: Layout) -> dict | None:
    """Parameters, trainable parameters, their bytes and the largest block's of the deep model as
    ``cfg`` trains it, from the shallow one (LoRA adapters, dtypes) with every deep block counted as
    its kept twin; the bare deep model (meta, published config) checks the sum of the base weights.
    None where it does not add up."""
    lists = dict(block_lists(shallow))
    kept = [_stats(lists[n][j].named_parameters()) for n, j in shallow_layout(shallow).blocks]
    if len(kept) != len(layout.keep):
        return None
    outside = _stats(shallow.named_parameters())
    for k in kept:
        outside.subtract(k)
    total = Counter(outside)
    for r in layout.rep:
        total.update(kept[r])
    if total["base"] != sum(p.numel() for p in deep.parameters()):
        return None
    keys = ("params", "trainable_params", "frozen_bytes", "trainable_bytes")
    largest = max((kept[r]["frozen_bytes"] + kept[r]["trainable_bytes"] for r in layout.rep), default=0)
    return {**{k: total[k] for k in keys}, "largest_block_bytes": largest}


def mark_blocks(model, meter) -> list:
    """Hooks cutting ``meter``'s pass at every block (module doc); returns their handles. Forward:
    a mark at each block's output; backward: a mark when the first of its outputs' gradients arrives
    (only hooks registered in the forward, not by the recomputation of gradient checkpointing)."""
    import torch
    from torch.utils._pytree import tree_flatten

    handles = []

    def on_output(module, args, out):
        if meter.backward_started:
            return
        meter.mark("forward")
        seen = []

        def on_grad(grad):
            if not seen:
                seen.append(True)
                meter.mark("backward")

        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.register_hook(on_grad)

    for _, lst in block_lists(model):
        handles += [block.register_forward_hook(on_output) for block in lst]
    return handles


def extrapolate(segments: list[tuple], rep: list[int]):
    """(forward FLOPs, backward FLOPs, peak bytes) of the deep pass from the shallow one's
    ``segments`` (kind, FLOPs, net bytes, rise, bytes freed by the segment that allocated them) in
    pass order: one forward segment per kept block, the head (``tail``: the rest of the forward),
    autocast's exit (``cast``: its cache of cast weights, one per block, freed), the loss and the
    head's backward (``turn``), one backward segment per kept block (last first). None where the
    marks do not fit that shape."""
    k = max(rep) + 1 if rep else 0
    if [s[0] for s in segments] != ["forward"] * k + ["tail", "cast", "turn"] + ["backward"] * k:
        return None
    fwd, (tail, cast, turn), bwd = segments[:k], segments[k : k + 3], segments[k + 3 :][::-1]
    copies = [rep.count(r) - 1 for r in range(k)]  # deep blocks beyond the kept one
    cast = (*cast[:2], cast[2] - sum(cast[4].get(o, 0) * copies[o] for o in range(k)), *cast[3:])
    order = [fwd[r] for r in rep] + [tail, cast, turn] + [bwd[r] for r in reversed(rep)]
    level, peak, flops = 0, 0, [0, 0]
    for i, (_, f, net, rise, _freed) in enumerate(order):
        peak = max(peak, level + rise)
        level += net
        flops[i > len(rep)] += f
    return flops[0], flops[1], peak
