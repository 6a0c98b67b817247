"""Start a server command that prints ``... at http://HOST:PORT`` once it listens; stop it by its pid."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def flowalign() -> list[str]:
    exe = shutil.which("flowalign")
    return [exe] if exe else [sys.executable, "-m", "flowalign.cli"]


def env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }


def start(argv: list[str], timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """Run ``argv``; return (process, URL) once it printed its URL; raise with its output if it died."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    seen = []
    for line in proc.stdout:
        seen.append(line)
        m = re.search(r" at (http://\S+)", line)
        if m:
            return proc, m.group(1)
    proc.wait(timeout)
    raise RuntimeError(f"{argv} exited {proc.returncode} before listening:\n{''.join(seen)}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)
    if proc.stdout:
        proc.stdout.close()


def free_port() -> int:
    """A port nothing listens on (bound then released: for an unreachable URL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
