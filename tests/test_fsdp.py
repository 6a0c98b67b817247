"""FSDP actually run: two CPU processes (gloo) shard the tiny SD3 transformer with accelerate's FSDP
plugin (FSDP2, ``fully_shard``: every parameter a DTensor shard) and train its LoRA adapters for 3
AdamW steps, each rank on half of a fixed 8-row batch; one process trains the same model on all 8 rows.
FSDP averages the ranks' gradients (reduce-scatter), so the adapters must end where the one process's
do: measured max |difference| 1.7e-7 after the LoRA B matrices moved 3e-2 from zero.

Accelerate 1.16 never selects FSDP for CPU processes: ``launch --use_fsdp`` sets
ACCELERATE_USE_FSDP=true, but ``AcceleratorState`` turns it into ``DistributedType.FSDP`` only for
MULTI_GPU / NPU / XPU / ... processes; CPU processes stay MULTI_CPU and ``prepare`` wraps DDP, with no
error. The runner therefore sets the state to FSDP with the plugin before ``prepare``, which then runs
accelerate's own FSDP2 path (``fsdp2_prepare_model``, optimizer parameters switched to the shards).
``flowalign train`` makes the same switch itself (``train.distributed.choose_fsdp``); its FSDP2 path
(checkpoints, resume, EMA, LoRA export) is run by tests/test_fsdp_train.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from test_trainer_multiprocess import _free_port

RUNNER = r"""
import os, sys
import torch
torch.set_num_threads(1)
from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from peft import LoraConfig
from safetensors.torch import save_file
from flowalign.models import load_model

out_dir, kind = sys.argv[1], sys.argv[2]
acc = Accelerator(cpu=True)
chosen = acc.distributed_type.value
if kind == "fsdp":  # accelerate keeps CPU processes MULTI_CPU (module doc): choose FSDP2 for it
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=["JointTransformerBlock"], state_dict_type="FULL_STATE_DICT",
    )
    acc.state.distributed_type, acc.state.fsdp_plugin = DistributedType.FSDP, plugin
torch.manual_seed(0)
t = load_model("tiny-sd3").transformer.requires_grad_(False)
targets = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"]
t.add_adapter(LoraConfig(r=4, lora_alpha=8, init_lora_weights="gaussian", target_modules=targets))
for p in t.parameters():
    if p.requires_grad:
        p.data = p.data.float()
optimizer = torch.optim.AdamW([p for p in t.parameters() if p.requires_grad], lr=1e-2)
wrapped, optimizer = acc.prepare(t, optimizer)
g, c, n = torch.Generator().manual_seed(1), t.config, 8
x, target = torch.randn(n, c.in_channels, 8, 8, generator=g), torch.randn(n, c.out_channels, 8, 8, generator=g)
text = torch.randn(n, 12, c.joint_attention_dim, generator=g)
pooled = torch.randn(n, c.pooled_projection_dim, generator=g)
timestep = torch.rand(n, generator=g) * 1000
k = acc.num_processes
rows = slice(acc.process_index * n // k, (acc.process_index + 1) * n // k)
for step in range(3):
    out = wrapped(
        hidden_states=x[rows], encoder_hidden_states=text[rows], pooled_projections=pooled[rows],
        timestep=timestep[rows], return_dict=False,
    )[0]
    acc.backward((out - target[rows]).square().mean())
    acc.clip_grad_norm_(wrapped.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad()
full = {
    name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone().contiguous()
    for name, p in wrapped.named_parameters() if p.requires_grad
}
kinds = sorted({type(p).__name__ for p in wrapped.parameters()})
if acc.is_main_process:
    save_file(full, os.path.join(out_dir, kind + ".safetensors"))
    print(f"chosen={chosen} wrapped={type(wrapped).__name__} params={kinds} world={k}")
acc.wait_for_everyone()
acc.end_training()
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
"""


@pytest.mark.e2e  # (about 25 CPU-seconds: two launches of torch + diffusers)
def test_fsdp2_two_cpu_processes_train_like_one(tmp_path):
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(_free_port()), str(runner), str(tmp_path), "fsdp"]
    two = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    # really sharded over 2 ranks (accelerate itself had chosen MULTI_CPU, module doc)
    assert "wrapped=FSDPSD3Transformer2DModel params=['DTensor'] world=2" in two.stdout, two.stdout
    one = subprocess.run([sys.executable, str(runner), str(tmp_path), "one"], env=env, capture_output=True, text=True)
    assert one.returncode == 0 and "params=['Parameter'] world=1" in one.stdout, one.stderr[-3000:]
    a, b = load_file(str(tmp_path / "fsdp.safetensors")), load_file(str(tmp_path / "one.safetensors"))
    assert a.keys() == b.keys() and len(a) == 8  # 4 targets x (A, B) in the 1-block transformer
    moved = max(float(b[k].abs().max()) for k in b if "lora_B" in k)  # B starts at zero
    assert moved > 1e-2
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)  # float32 reduction order only
