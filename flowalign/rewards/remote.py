"""``remote:URL``: a reward served by ``flowalign serve-reward`` (``serve.py``), used like any reward.

``load_reward("remote:http://host:8000")`` (or the name ``remote:http://host:8000`` in a config,
steer, gallery or eval metric) builds a ``RemoteReward``: at construction it asks ``GET /health``
once (an unreachable URL, a server answering non-JSON or another protocol is ONE ValueError there,
before training starts); then each call splits the batch into requests of at most ``batch_size``
images (capped by the server's ``max_batch``), sends up to ``concurrency`` of them at a time as JSON
with base64 PNG images, and puts the scores back in order.

Faults: a connection error, a timeout (``timeout`` seconds per request) or a 5xx answer is retried
``retries`` times with exponential backoff (``backoff * 2**k`` seconds, k = 0, 1, ...); then the
call raises ``RemoteRewardError`` naming the URL and the last error, which the trainer's reward
retries (``train.reward_retries``) and masking (``skipped/reward_failures``) handle. A 4xx answer
(the request itself is wrong: too large, not an image, a prompt the reward refuses) is not retried:
it is one ValueError with the server's message. A null score (the server's NaN) comes back as NaN, so
the trainer masks that sample.

Images are sent as 8-bit PNG (``quantise``): the served reward sees ``round(255 x) / 255``. The
remote reward is never differentiable. Metadata columns travel as JSON (tensors as nested lists with
their dtype); a column that is neither is one ValueError naming it.
"""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from .base import Reward

PROTOCOL = "flowalign-reward/1"
START = "start the server with `flowalign serve-reward NAME --host HOST --port PORT` and pass remote:http://HOST:PORT"


class RemoteRewardError(RuntimeError):
    """The reward server did not answer usefully after every retry."""


def quantise(images: Tensor) -> Tensor:
    """What the server receives: [B, 3, H, W] in [0, 1] rounded to 8 bits (round(255 x) / 255)."""
    return (images.detach().float().clamp(0, 1) * 255).round() / 255


def encode_png(image: Tensor) -> str:
    """[3, H, W] in [0, 1] -> base64 text of an 8-bit RGB PNG."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().cpu()
    buf = io.BytesIO()
    Image.fromarray(arr.numpy(), "RGB").save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def encode_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in meta.items():
        if torch.is_tensor(value):
            dtype = str(value.dtype).removeprefix("torch.")
            value = {"tensor": value.detach().cpu().tolist(), "dtype": dtype}
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"remote reward: metadata column {key!r} ({type(value).__name__}) cannot travel as JSON; "
                f"pass numbers, strings, lists or tensors."
            ) from None
        out[key] = value
    return out


def post_with_retries(client: Any, where: str, body: dict, retries: int, backoff: float) -> Any:
    """POST ``body`` as JSON; a connection error, timeout or 5xx is retried ``retries`` times after
    ``backoff * 2**k`` s; then RemoteRewardError. Returns the first response below 500."""
    import httpx

    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            resp = client.post(where, json=body)
        except httpx.HTTPError as err:  # connection refused / reset, timeout: retried
            last = f"{type(err).__name__}: {err}"
            continue
        if resp.status_code < 500:
            return resp
        last = f"HTTP {resp.status_code}: {resp.text[:200]}"
    raise RemoteRewardError(f"{where}: no answer after {retries + 1} attempts ({last}).")


class RemoteReward(Reward):
    """A reward behind ``flowalign serve-reward``; see the module docstring."""

    name = "remote"
    differentiable = False
    batch_size = 1 << 30  # the client splits into requests itself (``chunk``)

    def __init__(self, url: str, timeout: float, retries: int, backoff: float, chunk: int, concurrency: int):
        super().__init__()
        import httpx

        self.url, self.timeout, self.retries, self.backoff = url.rstrip("/"), timeout, retries, backoff
        self.client = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=concurrency))
        self.info = self._health()
        self.chunk = max(1, min(chunk, int(self.info.get("max_batch", chunk))))
        self.concurrency = concurrency
        self.name = f"remote:{self.info['reward']}"
        self.freeze()

    def _health(self) -> dict:
        import httpx

        where = f"{self.url}/health"
        try:
            resp = self.client.get(where)
        except httpx.HTTPError as err:
            raise ValueError(f"remote reward: cannot reach {where} ({type(err).__name__}: {err}); {START}.") from None
        try:
            info = resp.json()
        except ValueError:
            raise ValueError(
                f"remote reward: {where} answered HTTP {resp.status_code} with non-JSON "
                f"({resp.text[:80]!r}); is {self.url} a flowalign reward server? {START}."
            ) from None
        if not isinstance(info, dict) or info.get("protocol") != PROTOCOL:
            raise ValueError(
                f"remote reward: {where} does not speak {PROTOCOL} (it answered {str(info)[:120]}); {START}."
            )
        return info

    def score(self, images: Tensor, prompts: list[str], **metadata: Any) -> Tensor:
        b = images.shape[0]
        bodies = []
        for i in range(0, b, self.chunk):
            sl = slice(i, min(b, i + self.chunk))
            part = {
                k: v[sl] if (torch.is_tensor(v) or isinstance(v, (list, tuple))) and len(v) == b else v
                for k, v in metadata.items()
            }
            bodies.append(
                {
                    "images": [encode_png(x) for x in images[sl]],
                    "prompts": prompts[sl],
                    "metadata": encode_metadata(part),
                }
            )
        if len(bodies) == 1 or self.concurrency == 1:
            results = [self._post(body) for body in bodies]
        else:
            with ThreadPoolExecutor(min(self.concurrency, len(bodies))) as pool:
                results = list(pool.map(self._post, bodies))
        scores = [float("nan") if s is None else float(s) for r in results for s in r]
        return torch.tensor(scores, dtype=torch.float32)

    def _post(self, body: dict) -> list:
        """One /score request with retries and backoff -> the list of scores."""
        resp = post_with_retries(self.client, f"{self.url}/score", body, self.retries, self.backoff)
        return self._parse(resp, len(body["images"]))

    def _parse(self, resp: Any, n: int) -> list:
        try:
            out = resp.json()
        except ValueError:
            raise RemoteRewardError(
                f"remote reward {self.url}/score answered HTTP {resp.status_code} with non-JSON ({resp.text[:80]!r})."
            ) from None
        if resp.status_code >= 400:
            raise ValueError(
                f"remote reward {self.url} refused the request (HTTP {resp.status_code}): {out.get('detail', out)}"
            )
        scores = out.get("scores") if isinstance(out, dict) else None
        if not isinstance(scores, list) or len(scores) != n:
            raise RemoteRewardError(f"remote reward {self.url}/score answered {str(out)[:120]}, not {n} scores.")
        return scores


def load_remote(
    url: str,
    path: Any = None,
    device: Any = None,
    timeout: float = 60.0,
    retries: int = 3,
    backoff: float = 0.5,
    batch_size: int = 16,
    concurrency: int = 2,
) -> RemoteReward:
    """The client of a served reward at ``url`` (http:// or https://); ``device`` is ignored (the
    server owns the model). One ValueError for a bad option or an unreachable / foreign server."""
    if path is not None:
        raise ValueError(f"remote reward: path={path!r}; the weights live on the server, pass options there.")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"remote reward URL {url!r} must start with http:// or https:// (remote:http://HOST:PORT).")
    checks = {"timeout": timeout > 0, "retries": retries >= 0, "backoff": backoff >= 0}
    checks |= {"batch_size": batch_size >= 1, "concurrency": concurrency >= 1}
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise ValueError(
            f"remote reward: {bad[0]}={locals()[bad[0]]!r} is out of range (timeout > 0, others >= 0 / >= 1)."
        )
    return RemoteReward(url, float(timeout), int(retries), float(backoff), int(batch_size), int(concurrency))
