"""A small OpenAI-compatible chat server (FastAPI + uvicorn) backed by a deterministic judge, for the
VLM-judge tests and benchmark: ``python tests/servers/judge_server.py [--port 0]`` prints
``toy judge at http://127.0.0.1:PORT``.

``GET /v1/models`` lists ``toy-judge``. ``POST /v1/chat/completions`` reads the PNG images (data URLs)
and the text of the last user message and answers as a chat completion:
* one image: ``Final Score: S`` with S = 1 + 4 * (mean brightness), rounded to 2 decimals;
* two images: ``Image K is better`` for the brighter one (K = 1 on an exact tie);
The caption steers the failure modes: ``[garble]`` in it -> an answer without a verdict (a parse
failure); ``[raw]`` -> a JSON body that is not a chat completion (an unknown response format).
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import socket

import numpy as np
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from PIL import Image

app = FastAPI(title="toy judge")


def brightness(url: str) -> float:
    data = base64.b64decode(url.split("base64,", 1)[1])
    return float(np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64).mean() / 255.0)


def verdict(levels: list[float], text: str) -> str:
    if "[garble]" in text:
        return "Both images have merits; I cannot decide."
    if len(levels) == 1:
        return f"The image matches the caption reasonably. Final Score: {1 + 4 * levels[0]:.2f}"
    better = 1 if levels[0] >= levels[1] else 2
    return f"Image 1 brightness {levels[0]:.3f}, Image 2 {levels[1]:.3f}. Image {better} is better"


@app.get("/v1/models")
def models() -> dict:
    return {"object": "list", "data": [{"id": "toy-judge", "object": "model", "owned_by": "tests"}]}


@app.post("/v1/chat/completions")
def chat(body: dict) -> JSONResponse:
    content = body["messages"][-1]["content"]
    urls = [c["image_url"]["url"] for c in content if c.get("type") == "image_url"]
    text = " ".join(c["text"] for c in content if c.get("type") == "text")
    if "[raw]" in text:
        return JSONResponse({"output": "Image 1 is better"})
    answer = verdict([brightness(u) for u in urls], text)
    usage = {"prompt_tokens": len(re.findall(r"\w+", text)), "completion_tokens": len(answer.split())}
    return JSONResponse(
        {
            "id": "chatcmpl-toy",
            "object": "chat.completion",
            "model": body.get("model", "toy-judge"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
            "usage": usage,
        }
    )


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    sock = socket.socket()
    sock.bind((args.host, args.port))
    sock.listen(128)
    print(f"toy judge at http://{args.host}:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


if __name__ == "__main__":
    main()
