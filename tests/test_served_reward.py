"""Served rewards: the real ``flowalign serve-reward`` process on 127.0.0.1 and ``remote:URL`` as a reward
name; exact agreement with the local reward, the 4xx refusals, the start-up errors, and (``e2e``) a
training run whose reward server is killed mid-run, then resumed."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra: pip install 'flowalign[serve]'")
pytest.importorskip("httpx", reason="the serve extra: pip install 'flowalign[serve]'")

from servers.process import flowalign, free_port, start, stop  # noqa: E402

from flowalign.rewards import REWARDS, load_reward  # noqa: E402
from flowalign.rewards.remote import quantise  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "flowalign"


def test_no_pickle_on_the_network_path():
    for name in ("remote.py", "serve.py", "judge.py"):
        text = (PACKAGE / "rewards" / name).read_text()
        assert not re.search(r"\bpickle\b|\bcPickle\b|\bdill\b|torch\.load|np\.load|allow_pickle", text), name


def test_remote_names_are_reward_names():
    assert "remote:http://127.0.0.1:1" in REWARDS and "remote" not in REWARDS
    with pytest.raises(ValueError, match="must start with http:// or https://"):
        load_reward("remote:127.0.0.1:8000")


def test_remote_names_pass_every_reward_name_check():
    from flowalign.train.build import import_factory

    name = f"remote:http://127.0.0.1:{free_port()}"
    assert callable(import_factory(name))  # train / gallery resolve 'x:y' names through it; no call made yet
    with pytest.raises(ValueError, match="cannot reach"):
        import_factory(name)()  # building it is the health check


def test_serve_reward_refuses_bad_input_in_one_line(capsys):
    from flowalign.cli import main

    cases = {
        ("serve-reward", "nope"): "flowalign serve-reward: error: unknown reward 'nope'; serve one of [",
        ("serve-reward", "ocr", "--options", "{bad"): "flowalign serve-reward: error: --options '{bad' is not JSON",
    }
    for argv, start_of_line in cases.items():
        assert main(list(argv)) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and err[0].startswith(start_of_line), err
    with pytest.raises(SystemExit):
        main(["serve-reward", "ocr", "--port", "70000"])
    assert "'70000' is out of range" in capsys.readouterr().err


def test_unreachable_url_is_one_clear_error_at_start():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ValueError, match=rf"cannot reach {url}/health \(ConnectError.*flowalign serve-reward"):
        load_reward(f"remote:{url}", timeout=2)


def test_a_server_answering_non_json_is_one_clear_error(tmp_path):
    (tmp_path / "health").write_text("<html>not a reward server</html>")
    proc = subprocess.Popen([sys.executable, "-u", "-c", HTTP_SERVER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split(" at ")[1].strip()
        with pytest.raises(ValueError, match=r"answered HTTP 200 with non-JSON \('<html>not a reward"):
            load_reward(f"remote:{url}", timeout=5)
    finally:
        stop(proc)


HTTP_SERVER = """
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print("static files at http://127.0.0.1:%d" % srv.server_address[1], flush=True)
srv.serve_forever()
"""


@pytest.fixture(scope="module")
def served():
    proc, url = start(
        [*flowalign(), "serve-reward", "testbed_aesthetic", "--port", "0", "--threads", "1", "--max-mb", "1"]
    )
    yield proc, url
    stop(proc)


@pytest.mark.e2e
def test_remote_scores_equal_the_local_reward_exactly(served):
    served = served[1]
    torch.set_num_threads(1)
    remote = load_reward(f"remote:{served}", batch_size=5, concurrency=3)  # 4 requests of <= 5, 3 at a time
    local = load_reward("testbed_aesthetic")
    x = torch.rand(17, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["two red circles"] * 17
    got, want = remote(x, prompts), local(quantise(x), prompts)
    assert got.shape == (17,) and torch.equal(got, want)  # bitwise: same model, same 8-bit pixels
    assert remote.name == "remote:testbed_aesthetic" and not remote.differentiable


@pytest.mark.e2e
def test_bad_payloads_are_4xx_with_a_message(served):
    import httpx

    served = served[1]
    png = base64.b64encode(b"GIF89a not a png").decode()
    cases = {
        415: {"images": [png], "prompts": ["a"]},
        422: {"images": [], "prompts": []},
    }
    for status, body in cases.items():
        resp = httpx.post(f"{served}/score", json=body)
        assert resp.status_code == status and resp.json()["detail"], resp.text
    assert "is not a PNG" in httpx.post(f"{served}/score", json=cases[415]).json()["detail"]
    resp = httpx.post(f"{served}/score", content=b"{" + b" " * (1 << 20) + b"}")  # over --max-mb 1
    assert resp.status_code == 413 and "over the server's limit of 1048576" in resp.json()["detail"]
    resp = httpx.post(f"{served}/score", content=b"\x80not json")
    assert resp.status_code == 422 and "not JSON" in resp.json()["detail"]
    remote = load_reward(f"remote:{served}", retries=0, batch_size=64)
    with pytest.raises(ValueError, match=r"refused the request \(HTTP 413\)"):
        remote(torch.rand(64, 3, 96, 96), "noise")  # one request of 64 incompressible PNGs: 2.4 MB
    assert json.loads(httpx.get(f"{served}/health").text)["reward"] == "testbed_aesthetic"


@pytest.mark.e2e
def test_server_killed_mid_training_batches_are_skipped_and_counted_then_resume(served, tmp_path, capsys):
    """Iteration 1 trains on the served reward; the server is SIGKILLed as soon as its metrics row is
    written; the client retries, the trainer retries, masks and counts the batches, and stops after
    ``reward_patience`` iterations without a reward, with a checkpoint; a new server on the same port
    and ``--resume RUN`` finish the run. (Last in this module: it kills the module's server.)"""
    from test_trainer import TINY

    from flowalign.cli import main

    proc, url = served
    run_dir, name = tmp_path / "run", f"remote:{url}"
    argv = ["train", "testbed", *TINY, "train.iterations=5", "train.save_every=1", "eval.metrics={}"]
    argv += [json_override("reward.weights", {name: 1}), "train.reward_retries=1", "train.reward_patience=2"]
    argv += [json_override("reward.options", {name: {"retries": 1, "backoff": 0.05, "timeout": 10}})]
    killer = threading.Thread(target=kill_after_first_row, args=(run_dir / "metrics.jsonl", proc), daemon=True)
    killer.start()
    assert main([*argv, f"train.output_dir={run_dir}"]) == 1  # stopped: no reward in 2 iterations in a row
    killer.join(5)
    err = capsys.readouterr().err
    assert "no usable value in 2 iterations in a row" in err and "RemoteRewardError" in err, err[-3000:]
    assert "ConnectError" in err, err[-3000:]  # the client's retries, then the trainer's, named the cause
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped/reward_failures"] >= 4, rows[-1]  # >= 2 iterations x 2 batches, masked and counted
    stopped_at = len(rows)
    port = url.rsplit(":", 1)[1]
    again, url2 = start([*flowalign(), "serve-reward", "testbed_aesthetic", "--port", port, "--threads", "1"])
    try:
        assert url2 == url
        assert main(["train", "--resume", str(run_dir)]) == 0
    finally:
        stop(again)
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) > stopped_at and all(r["reward/total_mean"] == r["reward/total_mean"] for r in rows[stopped_at:])
    assert (run_dir / "checkpoints" / "checkpoint-000005").is_dir()


def kill_after_first_row(metrics, proc) -> None:
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1):
        time.sleep(0.02)
    stop(proc)


def json_override(key: str, value: dict) -> str:
    return f"{key}={json.dumps(value)}"
