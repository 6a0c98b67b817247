"""Checkpoints verified, not trusted: the manifest catches every kind of damage to every file of a
checkpoint, `latest` / `--resume auto` fall back to the newest intact one with one warning naming the
file, an explicit damaged checkpoint is one ValueError naming it; re-saves and the top-level export
never leave a moment without a complete copy; a training run resumed past a damaged checkpoint ends
bitwise equal to an uninterrupted one; a corrupt LoRA in the gallery is one error line."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_trainer import PROMPTS, TINY, brightness

from flowalign.train import checkpoint as ckpt
from flowalign.train import integrity
from flowalign.train.checkpoint import CheckpointWarning
from flowalign.train.resume import resolve_resume

FILES = [
    "trainable.safetensors",
    "optimizer.safetensors",
    "ema.safetensors",
    "rng_0.safetensors",
    "rng_0.json",
    "state.json",
    "lora/pytorch_lora_weights.safetensors",
]
WHAT = {"truncate": "bytes, the manifest says", "flip": "does not match its sha256", "delete": "is missing"}


def corrupt(file: Path, kind: str) -> None:
    data = bytearray(file.read_bytes())
    if kind == "truncate":
        file.write_bytes(bytes(data[: len(data) - 7]))
    elif kind == "flip":
        data[len(data) // 2] ^= 0x01
        file.write_bytes(bytes(data))
    else:
        file.unlink()


def save(run: Path, it: int, scale: float = 1.0, **kw) -> Path:
    p = torch.nn.Parameter(torch.arange(4.0) * scale * it)
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    parts = {"trainable": {"w": p}, "optimizer": opt.state_dict(), "ema": {"shadow": [p.detach() * 0.5]}}

    def lora(d):
        (Path(d) / "lora").mkdir()
        save_file({"a": p.detach().clone()}, str(Path(d) / FILES[-1]))

    return ckpt.save(run, it, parts, {"iteration": it}, export=lora, **kw)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ck") / "run"
    save(run, 1)
    save(run, 2)
    return run


def one_warning(record) -> str:
    mine = [w for w in record if issubclass(w.category, CheckpointWarning)]
    assert len(mine) == 1, [str(w.message) for w in mine]
    return str(mine[0].message)


# --- 1. each corruption kind of each file kind ------------------------------------------------------
@pytest.mark.parametrize("kind", list(WHAT))
@pytest.mark.parametrize("name", FILES)
def test_manifest_catches_damage_and_resume_falls_back(pristine, tmp_path, name, kind):
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    c1, c2 = run / "checkpoints" / "checkpoint-000001", run / "checkpoints" / "checkpoint-000002"
    assert integrity.verify(c2) is None and json.loads((c2 / "manifest.json").read_text())["files"].keys() == set(FILES)
    corrupt(c2 / name, kind)
    assert name in integrity.verify(c2) and WHAT[kind] in integrity.verify(c2)
    for find in (lambda: ckpt.latest(run), lambda: resolve_resume("auto", run, "runs", "x")):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            assert find() == c1
        message = one_warning(record)
        assert (
            f"checkpoint-000002: {name}" in message and WHAT[kind] in message and "using checkpoint-000001" in message
        )
    for explicit in (lambda: resolve_resume(str(c2), None, "runs", "x"), lambda: ckpt.load(c2)):
        with pytest.raises(ValueError) as err:
            explicit()
        text = str(err.value)
        assert f"checkpoint {c2} is damaged: {name}" in text and WHAT[kind] in text
        assert "resume from checkpoint-000001, the newest intact checkpoint before it" in text
        assert err.value.__cause__ is None and "\n" not in text
    with pytest.warns(CheckpointWarning, match=f"checkpoint-000002: {name}"):
        parts, scalars = ckpt.load(resolve_resume(str(run), None, "runs", "x"))  # a run folder: falls back
    intact = ckpt.load(pristine / "checkpoints" / "checkpoint-000001")[0]["trainable"]["w"]
    assert scalars["iteration"] == 1 and torch.equal(parts["trainable"]["w"], intact)


def test_manifest_itself_old_checkpoints_and_all_damaged(pristine, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    c1, c2 = run / "checkpoints" / "checkpoint-000001", run / "checkpoints" / "checkpoint-000002"
    (c2 / "manifest.json").write_text('{"files": {"state.json": ')
    assert integrity.verify(c2).startswith("manifest.json is unreadable")
    (c2 / "manifest.json").unlink()  # state.json says there was one
    assert integrity.verify(c2) == "manifest.json is missing"
    # a checkpoint written before manifests: accepted unverified, an unreadable file still one clear error
    state = json.loads((c2 / "state.json").read_text())
    (c2 / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "manifest"}))
    assert integrity.verify(c2) is None and ckpt.latest(run) == c2 and ckpt.load(c2)[1]["iteration"] == 2
    corrupt(c2 / "optimizer.safetensors", "truncate")
    with pytest.raises(ValueError) as err:
        ckpt.load(c2)
    assert str(err.value).startswith(f"cannot read {c2 / 'optimizer.safetensors'} (")
    assert "truncated, damaged or not a safetensors file; resume from checkpoint-000001" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    # every checkpoint damaged: one error, nothing silently picked from elsewhere
    corrupt(c1 / "rng_0.json", "flip")
    corrupt(c2 / "state.json", "truncate")  # (c2 has no manifest now: an unreadable state.json is still caught)
    with pytest.raises(ValueError, match=r"every checkpoint in .* is damaged \(checkpoint-000002: state.json is unr"):
        resolve_resume("auto", run, "runs", "x")
    with pytest.raises(ValueError, match=r"rng_0.json does not match .*; no intact checkpoint precedes it"):
        resolve_resume(str(c1), None, "runs", "x")


# --- re-save and export: never a moment without a complete copy ---------------------------------------
def test_resave_moves_aside_then_replaces_and_fsyncs_the_parent(tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = save(run, 2)
    old_w = ckpt.load(first)[0]["trainable"]["w"]
    real, synced = os.replace, []
    monkeypatch.setattr(integrity, "fsync_dir", lambda d: synced.append(Path(d)))

    def killed(src, dst):  # the process dies between moving the old checkpoint aside and renaming the new one in
        if Path(src).name.startswith(".tmp-"):
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save(run, 2, scale=3.0)
    monkeypatch.setattr(os, "replace", real)
    aside = run / "checkpoints" / ".old-checkpoint-000002"
    assert not first.exists() and ckpt.checkpoints(run) == [(2, aside)] and ckpt.latest(run) == aside
    assert torch.equal(ckpt.load(resolve_resume("auto", run, "r", "x"))[0]["trainable"]["w"], old_w)
    synced.clear()
    assert save(run, 2, scale=3.0) == first and not aside.exists() and first.parent in synced
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["checkpoint-000002"]
    new_w = ckpt.load(first)[0]["trainable"]["w"]
    assert not torch.equal(new_w, old_w) and torch.equal(
        new_w, ckpt.load(save(tmp_path / "b", 2, scale=3.0))[0]["trainable"]["w"]
    )


def test_export_atomic_keeps_the_previous_export_until_the_new_one_is_whole(tmp_path):
    def export(value, fail=False):
        def fn(d):
            (Path(d) / "lora").mkdir()
            (Path(d) / "lora" / "a.txt").write_text(value)
            if fail:
                raise RuntimeError("killed mid-export")

        return fn

    run = tmp_path / "run"
    assert integrity.export_atomic(run, export("one")) == [run / "lora"]
    with pytest.raises(RuntimeError):
        integrity.export_atomic(run, export("two", fail=True))
    assert (run / "lora" / "a.txt").read_text() == "one"
    integrity.export_atomic(run, export("three"))
    assert (run / "lora" / "a.txt").read_text() == "three" and sorted(p.name for p in run.iterdir()) == ["lora"]


# --- 2. end to end: damage the newest checkpoint, resume with --resume auto, finish -----------------------
OVERRIDES = TINY + ["train.iterations=3", "train.save_every=1"]


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.transformer.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    from flowalign.train import run as train_cli

    out = tmp_path_factory.mktemp("e2e") / "full"
    cfg, _ = train_cli.resolve_config(None, [*OVERRIDES, f"train.output_dir={out}"], None)
    return out, trainable(train_cli.main(cfg, reward_fn=brightness, prompts=PROMPTS).model)


@pytest.mark.parametrize(
    "name,kind",
    [("trainable.safetensors", "truncate"), ("optimizer.safetensors", "flip"), ("state.json", "truncate")],
)
def test_resume_past_a_damaged_checkpoint_matches_an_uninterrupted_run(uninterrupted, tmp_path, name, kind):
    from flowalign.train import run as train_cli

    full, expected = uninterrupted
    out = tmp_path / "cut"
    shutil.copytree(full, out)
    newest = out / "checkpoints" / "checkpoint-000003"
    corrupt(newest / name, kind)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cfg, path = train_cli.resolve_config(None, [f"train.output_dir={out}"], "auto")
    assert path == out / "checkpoints" / "checkpoint-000002"
    assert f"checkpoint-000003: {name}" in one_warning(record)
    resumed = train_cli.main(cfg, reward_fn=brightness, prompts=PROMPTS, resume=path)
    assert resumed.state.iteration == 3
    got = trainable(resumed.model)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    assert integrity.verify(newest) is None and ckpt.latest(out) == newest  # re-saved whole, in place
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


# --- 3. a corrupt LoRA in the gallery -------------------------------------------------------------------
def test_corrupt_lora_in_gallery_is_one_error_line(tmp_path, capsys):
    from flowalign.cli import main
    from flowalign.gallery.specs import Checkpoint, check_weights, resolve_checkpoint

    lora = tmp_path / "lora"
    lora.mkdir()
    file = lora / "pytorch_lora_weights.safetensors"
    save_file({"transformer.a.lora_A.weight": torch.ones(4, 4)}, str(file))
    resolve_checkpoint(str(lora))
    corrupt(file, "truncate")
    base = ["gallery", "--model", "tiny-sd3", "--prompt", "a cat", "--seeds", "0", "--no-plots"]
    out = tmp_path / "g"
    assert main([*base, "--reward", "testbed_artifact", "--method", f"lora:{lora}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and not out.exists()
    assert err.startswith(f"flowalign gallery: error: cannot read {file} (")
    assert err.rstrip().endswith(
        "truncated, damaged or not a safetensors file; re-export the LoRA, or pass "
        "RUN/checkpoints/last (the newest intact checkpoint of the run)."
    )
    file.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="cannot read .*pytorch_lora_weights.safetensors"):
        check_weights(Checkpoint("lora", str(lora), None))


def test_gallery_checks_a_training_checkpoints_lora_against_its_manifest(pristine, tmp_path):
    from flowalign.gallery.specs import resolve_checkpoint

    run = tmp_path / "run"
    shutil.copytree(pristine, run)
    c1, c2 = run / "checkpoints" / "checkpoint-000001", run / "checkpoints" / "checkpoint-000002"
    corrupt(c2 / FILES[-1], "flip")  # still a valid safetensors file: only the manifest can tell
    with pytest.raises(ValueError, match=f"checkpoint {c2} is damaged: lora/pytorch_lora_weights.safetensors does"):
        resolve_checkpoint(str(c2))
    with pytest.warns(CheckpointWarning, match="checkpoint-000002: lora/pytorch_lora_weights.safetensors"):
        assert resolve_checkpoint(f"{run}/checkpoints/last").path == str((c1 / "lora").resolve())
