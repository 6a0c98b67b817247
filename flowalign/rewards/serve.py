"""Any registered reward behind HTTP (FastAPI + uvicorn): ``flowalign serve-reward NAME``.

Protocol ``flowalign-reward/1`` (JSON in, JSON out; images are PNG; nothing is unpickled):

* ``GET /health`` -> ``{"protocol", "reward", "max_batch", "max_bytes", "max_side"}``;
* ``POST /score`` with ``{"images": [base64 PNG, ...], "prompts": [str, ...], "metadata": {column: value}}``
  -> ``{"scores": [float | null, ...]}`` (null = NaN: the reward refused that sample).
  A metadata column is a JSON value, or ``{"tensor": nested list, "dtype": "float32"}`` for a tensor.

Refusals are 4xx with ``{"detail": message}``: 413 for a body over ``max_bytes`` (checked on the
``Content-Length`` header before reading, and on the bytes read), 415 for an image that is not a PNG
(or not decodable / not RGB-convertible), 422 for a malformed request (not JSON, prompts not one per
image, more than ``max_batch`` images, an image over ``max_side`` pixels a side). A ValueError of the
reward itself (e.g. the OCR reward's prompt without quoted text) is a 422 naming it; any other failure
of the reward is a 500 (the client retries those).

Images travel as 8-bit PNG: the server scores ``round(255 x) / 255`` of what the client holds (the
client's ``quantise``), so a deterministic reward served remotely gives exactly the scores of the
local reward on the quantised images. Scoring is serialised by a lock (one model, one batch at a
time); uvicorn's thread pool accepts concurrent requests, which wait for it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import threading
from typing import Any

import torch
from torch import Tensor

PROTOCOL = "flowalign-reward/1"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64, "bool": torch.bool}


class Refused(Exception):
    """A request the server refuses: HTTP ``status`` with ``message``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def decode_png(data: str, index: int, max_side: int) -> Tensor:
    """One base64 PNG -> [3, H, W] float in [0, 1]; Refused(415 / 422) otherwise."""
    from PIL import Image

    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise Refused(415, f"images[{index}] is not base64 text; send each image as a base64-encoded PNG.") from None
    if not raw.startswith(PNG_MAGIC):
        raise Refused(415, f"images[{index}] is not a PNG (starts with {raw[:8]!r}); send PNG images.")
    try:
        img = Image.open(io.BytesIO(raw))
        if max(img.size) > max_side:
            raise Refused(422, f"images[{index}] is {img.size[0]}x{img.size[1]}, over the server's {max_side} px.")
        arr = torch.frombuffer(bytearray(img.convert("RGB").tobytes()), dtype=torch.uint8)
    except Refused:
        raise
    except Exception as err:  # truncated / corrupt PNG: PIL raises many types
        raise Refused(415, f"images[{index}] cannot be decoded as a PNG ({type(err).__name__}: {err}).") from None
    return arr.view(img.size[1], img.size[0], 3).permute(2, 0, 1).float() / 255.0


def decode_metadata(meta: Any) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise Refused(422, f"metadata must be a JSON object of columns, got {type(meta).__name__}.")
    out = {}
    for key, value in meta.items():
        if isinstance(value, dict) and set(value) == {"tensor", "dtype"}:
            if value["dtype"] not in DTYPES:
                raise Refused(422, f"metadata[{key!r}] dtype {value['dtype']!r}; use one of {sorted(DTYPES)}.")
            try:
                value = torch.tensor(value["tensor"], dtype=DTYPES[value["dtype"]])
            except (TypeError, ValueError) as err:
                raise Refused(422, f"metadata[{key!r}] is not a rectangular tensor ({err}).") from None
        out[key] = value
    return out


def parse_request(body: bytes, max_batch: int, max_side: int) -> tuple[Tensor, list[str], dict[str, Any]]:
    """The /score body -> (images [B, 3, H, W], prompts, metadata); Refused for anything malformed."""
    try:
        req = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise Refused(422, f"the body is not JSON ({err}); POST {{'images': [...], 'prompts': [...]}}.") from None
    if not isinstance(req, dict) or not isinstance(req.get("images"), list) or not isinstance(req.get("prompts"), list):
        raise Refused(422, "the body must be a JSON object with lists 'images' (base64 PNG) and 'prompts'.")
    images, prompts = req["images"], req["prompts"]
    if not images or len(images) > max_batch:
        raise Refused(422, f"{len(images)} images; send 1 to {max_batch} per request (the server's max_batch).")
    if len(prompts) != len(images) or not all(isinstance(p, str) for p in prompts):
        raise Refused(422, f"'prompts' must hold {len(images)} strings, one per image.")
    decoded = [decode_png(d, i, max_side) for i, d in enumerate(images)]
    if len({tuple(t.shape) for t in decoded}) != 1:
        raise Refused(422, "the images of one request must share one size.")
    return torch.stack(decoded), prompts, decode_metadata(req.get("metadata", {}))


def build_app(reward: Any, name: str, max_batch: int = 64, max_bytes: int = 64 << 20, max_side: int = 4096):
    """The FastAPI app serving ``reward`` (a flowalign Reward or any (images, prompts, **meta) -> [B])."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.requests import Request

    app = FastAPI(title=f"flowalign reward: {name}")
    lock = threading.Lock()
    info = {"protocol": PROTOCOL, "reward": name, "max_batch": max_batch, "max_bytes": max_bytes, "max_side": max_side}

    @app.get("/health")
    def health() -> dict:
        return info

    async def score(request) -> JSONResponse:
        try:
            body = await read_limited(request, max_bytes)
            images, prompts, meta = parse_request(body, max_batch, max_side)
        except Refused as err:
            return JSONResponse({"detail": err.message}, status_code=err.status)
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(run_reward, reward, lock, images, prompts, meta)

    score.__annotations__ = {"request": Request, "return": JSONResponse}  # resolvable (postponed annotations)
    app.post("/score")(score)
    return app


async def read_limited(request: Any, max_bytes: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise Refused(
            413, f"the body has {int(length)} bytes, over the server's limit of {max_bytes}; send fewer images."
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise Refused(413, f"the body is over the server's limit of {max_bytes} bytes; send fewer images.")
        chunks.append(chunk)
    return b"".join(chunks)


def run_reward(reward: Any, lock: threading.Lock, images: Tensor, prompts: list[str], meta: dict) -> Any:
    from fastapi.responses import JSONResponse

    try:
        with lock, torch.no_grad():
            out = reward(images, prompts, **meta)
    except ValueError as err:  # the reward refused the input: the client's fault, not retried
        return JSONResponse({"detail": f"the reward refused the request: {err}"}, status_code=422)
    except Exception as err:  # any other failure: a 500, which the client retries
        return JSONResponse({"detail": f"the reward failed: {type(err).__name__}: {err}"}, status_code=500)
    values = torch.as_tensor(getattr(out, "total", out)).detach().float().reshape(-1).cpu()
    valid = torch.isfinite(values)
    if getattr(out, "valid", None) is not None:  # a Scores record: its refused rows are null too
        valid &= out.valid.detach().cpu().bool().reshape(-1)
    return JSONResponse({"scores": [v if ok else None for v, ok in zip(values.tolist(), valid.tolist())]})


def serve(name: str, options: dict, host: str, port: int, *, max_batch: int, max_bytes: int, ready=print) -> None:
    """Build reward ``name`` (``load_reward(name, **options)``), bind ``host:port`` (0 = a free port),
    call ``ready(url)`` and serve until interrupted."""
    import socket

    import uvicorn

    from .registry import load_reward

    reward = load_reward(name, **options)
    app = build_app(reward, name, max_batch=max_batch, max_bytes=max_bytes)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        raise ValueError(f"cannot listen on {host}:{port} ({err}); pick another --port (0 = any free port).") from None
    sock.listen(128)  # connections queue from here on, before uvicorn starts accepting
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    ready(f"http://{shown}:{bound}")
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)
    uvicorn.Server(config).run(sockets=[sock])
