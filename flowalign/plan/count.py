"""FLOPs and activation memory of one training micro-batch, traced on fake tensors: the preset's
transformer (``build.build``: LoRA or full, gradient checkpointing, ``model.dtype``) runs forward and
backward on ``example_inputs`` under ``FakeTensorMode`` (shapes only: a 2.2 B-parameter model costs no
memory), inside ``Meter``: matmul / conv / attention FLOPs by ``FlopCounterMode``'s formulas (2 per
multiply-add) and the bytes of every tensor storage alive, peak over the pass. The forward count is
also the sampling forward's: sampling runs the same adapted transformer without grad. ``trace`` runs
the pass on a shallow copy (three blocks a run) cut into per-block segments and replays them to the
published depth (``shallow.py``: the same FLOPs and peak as the deep trace, ~6x faster for SD3.5-M,
~7x for FLUX.1-dev); the parameters come from the deep model built on the meta device.

CPU attention: fake tensors on the CPU take ``_scaled_dot_product_flash_attention_for_cpu``, which
FlopCounterMode does not count; ``register_cpu_attention`` gives it the formula of the GPU flash kernel
(``sdpa_flop_count``), so the count is the GPU's.

Closed forms for the tests: ``sd3_params`` / ``flux_params`` count the parameters of an SD3 / Flux
config; ``tests/test_plan.py`` writes out the FLOPs of a joint-attention block (equal to the trace's,
forward and backward, on the testbed transformer).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from .build import Spec, build, example_inputs, to_fake


class Meter(TorchDispatchMode):
    """Counts, op by op, FLOPs with ``FlopCounterMode``'s formulas (``flop_counter.flop_registry``) and
    the bytes of the tensor storages that ops create and that are still referenced (by autograd's saved
    tensors, by the caller): ``peak`` is their maximum over the pass. Storages that existed before the
    mode was entered (weights, pre-allocated gradients) are not counted, nor are views and in-place
    results. (``FlopCounterMode`` itself is not used here: its module hooks keep the recomputed blocks
    of gradient checkpointing alive through backward, 2.3x the testbed's peak.)"""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.flops = 0, 0, 0
        self._seen: weakref.WeakSet = weakref.WeakSet()
        self.marks: list[tuple[str, int, int, int]] = []  # (kind, live, peak since the last mark, flops)
        self._rise, self.backward_started = 0, False
        self.freed: dict[int, dict[int, int]] = {}  # segment -> segment that allocated it -> bytes freed
        self._flops = flop_registry

    def mark(self, kind: str) -> None:
        """Close a segment of the pass here (``shallow.py``)."""
        self.marks.append((kind, self.live, self._rise, self.flops))
        self._rise = self.live

    def segments(self) -> list[tuple[str, int, int, int]]:
        """(kind, FLOPs, net live bytes, rise above the start) between consecutive marks; kind:
        ``forward`` (ends at a block's output), ``tail`` (ends at the model's output), ``turn`` (from
        there to the first backward mark), ``backward`` (starts at one)."""
        out, prev = [], ("", 0, 0, 0)
        for i, (kind, live, rise, flops) in enumerate(self.marks):
            label = {"forward": "forward", "out": "tail", "cast": "cast"}.get(kind)
            label = label or ("turn" if prev[0] == "cast" else "backward")
            out.append((label, flops - prev[3], live - prev[1], rise - prev[1], self.freed.get(i, {})))
            prev = (kind, live, rise, flops)
        return out

    def _free(self, nbytes: int, origin: int) -> None:
        self.live -= nbytes
        by_origin = self.freed.setdefault(len(self.marks), {})
        by_origin[origin] = by_origin.get(origin, 0) + nbytes

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage in self._seen:
            return
        self._seen.add(storage)
        n = storage.nbytes()
        weakref.finalize(storage, self._free, n, len(self.marks))
        self.live += n
        self.peak = max(self.peak, self.live)
        self._rise = max(self._rise, self.live)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self._flops.get(func._overloadpacket)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        inputs = {id(t.untyped_storage()) for t in _tensors(args)}
        inputs.update(id(t.untyped_storage()) for t in _tensors(kwargs.values()))
        for t in _tensors(out if isinstance(out, (list, tuple)) else (out,)):
            if id(t.untyped_storage()) not in inputs:  # views, in-place: not new
                self._track(t)
        return out


def _tensors(items):
    """The tensors among ``items`` and inside its lists / tuples (an op's arguments are no deeper)."""
    for x in items:
        if isinstance(x, torch.Tensor):
            yield x
        elif isinstance(x, (list, tuple)):
            yield from (t for t in x if isinstance(t, torch.Tensor))


def register_cpu_attention() -> None:
    """FLOP formulas for the CPU flash-attention kernel (forward and backward), once."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = aten._scaled_dot_product_flash_attention_for_cpu
    if fwd in fc.flop_registry or fwd.default in fc.flop_registry:
        return

    @fc.register_flop_formula(fwd)
    def _fwd(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query_shape, key_shape, value_shape)

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


@dataclass
class Trace:
    batch: int  # rows of the traced call (a CFG pair counts as 2)
    params: int  # all parameters (LoRA adapters included)
    trainable_params: int
    frozen_bytes: int  # frozen weights in model.dtype
    trainable_bytes: int  # trainable weights (fp32)
    largest_block_bytes: int  # the biggest transformer block (what FSDP gathers at once)
    forward_flops: int  # one forward of `batch` rows
    backward_flops: int  # its backward, with the recomputed forward under gradient checkpointing
    activation_bytes: int  # peak live storage of the forward + backward, weights and gradients excluded
    seconds: float  # wall time of the trace


def _autocast(cfg):
    mp = cfg.train.mixed_precision
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mp)
    return torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)


def largest_block_bytes(model: torch.nn.Module) -> int:
    blocks = [m for name, m in model.named_children() if isinstance(m, torch.nn.ModuleList)]
    sizes = [sum(p.numel() * p.element_size() for p in b.parameters()) for lst in blocks for b in lst]
    return max(sizes, default=0)


def trace(spec: Spec, cfg, batch: int, full: bool = False) -> Trace:
    """Build ``spec`` as ``cfg`` trains it and run one micro-batch of ``batch`` rows forward and
    backward (loss: the mean square of the output) on fake tensors; see the module doc. Parameters
    come from the deep model built on the meta device; FLOPs and the activation peak from a shallow
    copy traced and replayed to full depth (``shallow.py``: exact), or, with ``full`` (or where the
    blocks cannot be cut), from a trace of the deep model itself."""
    import peft  # noqa: F401  (imported before the clock starts: seconds are the build and the trace)

    register_cpu_attention()
    t0 = time.time()
    counted = None if full else _shallow_pass(build(spec), spec, cfg, batch)
    if counted is None:
        model = build(spec, cfg)
        counted = (*_pass(model, spec, cfg, batch)[:3], _sizes(model))
    forward, backward, peak, sizes = counted
    return Trace(
        batch=batch,
        **sizes,
        forward_flops=int(forward),
        backward_flops=int(backward),
        activation_bytes=int(peak),
        seconds=time.time() - t0,
    )


def _sizes(model: torch.nn.Module) -> dict:
    params = list(model.parameters())
    train = [p for p in params if p.requires_grad]
    return dict(
        params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in train),
        frozen_bytes=sum(p.numel() * p.element_size() for p in params if not p.requires_grad),
        trainable_bytes=sum(p.numel() * p.element_size() for p in train),
        largest_block_bytes=largest_block_bytes(model),
    )


def _pass(model, spec: Spec, cfg, batch: int, marks: bool = False) -> tuple[int, int, int, Meter]:
    """(forward FLOPs, backward FLOPs, activation peak, the Meter) of one fake-tensor micro-batch of
    the meta-built ``model``; ``marks``: cut it at every block (``shallow.mark_blocks``)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .shallow import mark_blocks

    with FakeTensorMode():
        to_fake(model).train()
        for p in model.parameters():  # gradients exist before the pass: accumulation is in place
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        inputs = example_inputs(spec, cfg, batch)
        meter = Meter()
        handles = mark_blocks(model, meter) if marks else []
        try:
            with meter:
                with _autocast(cfg):
                    out = model(**inputs, return_dict=False)[0]
                    meter.mark("out")
                forward = meter.flops
                meter.mark("cast")  # autocast's cache of cast weights freed
                meter.backward_started = True
                out.float().square().mean().backward()
                del out
                meter.mark("end")
        finally:
            for h in handles:
                h.remove()
    return forward, meter.flops - forward, meter.peak, meter


def _shallow_pass(deep, spec: Spec, cfg, batch: int):
    """(forward FLOPs, backward FLOPs, peak, sizes) of the bare deep meta model ``deep`` as ``cfg``
    trains it, from its shallow copy (``shallow.py``), or None where it cannot be cut so (then the
    deep model is built with its adapters and traced)."""
    from .shallow import extrapolate, reduce_config, replayed_sizes, same_blocks, shallow_layout

    layout = shallow_layout(deep)
    small = reduce_config(spec, layout)
    if small is None or len(layout.keep) == len(layout.blocks):
        return None
    shallow = build(small, cfg)
    sizes = replayed_sizes(deep, shallow, layout) if same_blocks(deep, shallow, layout) else None
    if sizes is None:
        return None
    meter = _pass(shallow, small, cfg, batch, marks=True)[3]
    counted = extrapolate(meter.segments(), layout.rep)
    return None if counted is None else (*counted, sizes)


def count_params(spec: Spec) -> int:
    """Parameters of the bare published transformer, built on the meta device (about a second)."""
    return sum(p.numel() for p in build(spec).parameters())


# --- closed forms (the tests compare the traced numbers with these) ---------------------------------
def sd3_params(c: dict) -> int:
    """Parameters of ``SD3Transformer2DModel(**c)``, hidden D = heads x head_dim, J = joint_attention_dim,
    P = pooled_projection_dim, p = patch_size, C = in_channels, L = num_layers, d = head_dim:
    patch embed C p^2 D + D (conv); timestep MLP 256 D + D + D D + D; pooled MLP P D + D + D D + D;
    caption projection J D + D. A joint block: AdaLN-Zero of both streams 2 (D 6D + 6D) (the last
    block's context stream: D 2D + 2D); attention q, k, v, out of the image stream 4 (D D + D) and of
    the context stream the same (the last block: no context out); qk RMSNorm weights 2 d per stream;
    FF 2 (D 4D + 4D + 4D D + D) (the last block: the image FF only); a dual-attention block adds
    AdaLN-Zero-X's extra 3 D chunks (D 3D + 3D), a second attention 4 (D D + D) + 2 d. Output: AdaLN
    continuous D 2D + 2D, projection D p^2 C_out + p^2 C_out."""
    hd, n = c["attention_head_dim"], c["num_attention_heads"]
    d = hd * n
    p, cin, cout = c["patch_size"], c["in_channels"], c.get("out_channels") or c["in_channels"]
    lin = lambda i, o: i * o + o  # noqa: E731  (a Linear with bias)
    qk = 2 * hd if c.get("qk_norm") == "rms_norm" else 0
    total = cin * p * p * d + d + lin(256, d) + lin(d, d) + lin(c["pooled_projection_dim"], d) + lin(d, d)
    total += lin(c["joint_attention_dim"], c["caption_projection_dim"])
    ff = lin(d, 4 * d) + lin(4 * d, d)
    dual = set(c.get("dual_attention_layers") or [])
    for i in range(c["num_layers"]):
        last = i == c["num_layers"] - 1
        block = lin(d, 6 * d) + (lin(d, 2 * d) if last else lin(d, 6 * d))
        block += 4 * lin(d, d) + qk + 3 * lin(d, d) + qk + (0 if last else lin(d, d))
        block += ff + (0 if last else ff)
        if i in dual:
            block += lin(d, 9 * d) - lin(d, 6 * d) + 4 * lin(d, d) + qk
        total += block
    return total + lin(d, 2 * d) + lin(d, p * p * cout)


def flux_params(c: dict) -> int:
    """Parameters of ``FluxTransformer2DModel(**c)``, D = heads x head_dim, d = head_dim: embedders
    C D + D (image), J D + D (text), the timestep / guidance / pooled-text MLPs 256 D + D + D D + D
    each (guidance only with ``guidance_embeds``; pooled: P D + D + D D + D). A double block: AdaLN-Zero
    of both streams 2 (D 6D + 6D), q k v out of both streams 8 (D D + D), qk RMSNorm 4 d, two FFs
    2 (D 4D + 4D + 4D D + D). A single block: AdaLN-Zero D 3D + 3D, q k v 3 (D D + D) + 2 d, MLP in
    D 4D + 4D, the fused out projection 5D D + D. Output: D 2D + 2D and D p^2 C + p^2 C."""
    hd, n = c["attention_head_dim"], c["num_attention_heads"]
    d, p, cin = hd * n, c.get("patch_size", 1), c["in_channels"]
    cout = c.get("out_channels") or cin
    lin = lambda i, o: i * o + o  # noqa: E731  (a Linear with bias)
    mlp = lin(256, d) + lin(d, d)
    total = lin(cin, d) + lin(c["joint_attention_dim"], d) + mlp * (2 if c.get("guidance_embeds") else 1)
    total += lin(c["pooled_projection_dim"], d) + lin(d, d)
    double = 2 * lin(d, 6 * d) + 8 * lin(d, d) + 4 * hd + 2 * (lin(d, 4 * d) + lin(4 * d, d))
    single = lin(d, 3 * d) + 3 * lin(d, d) + 2 * hd + lin(d, 4 * d) + lin(5 * d, d)
    total += c["num_layers"] * double + c["num_single_layers"] * single
    return total + lin(d, 2 * d) + lin(d, p * p * cout)
