"""VLM judges over an OpenAI-compatible ``/v1/chat/completions`` endpoint (what vLLM and SGLang serve).

* ``vlm_judge`` — **pointwise**, in the style of UnifiedReward (Wang et al. 2025, "Unified Reward Model
  for Multimodal Understanding and Generation", arXiv 2503.05236; flow_grpo's ``unifiedreward``
  scorer): one request per image with the image and ``POINTWISE_TEMPLATE`` (the caption in brackets,
  "a score from 1 to 5 after 'Final Score:'"); the answer is parsed with ``POINTWISE_PATTERN``
  ``Final Score:\\s*([1-5](?:\\.\\d+)?)`` (first match) and the reward is ``score / max_score``.
* ``vlm_pairwise`` — **pairwise** preferences giving Pref-GRPO's (arXiv 2508.20751) group win rate:
  the rows sharing a prompt form a group; every unordered pair (i, j) of a group is asked once as
  "Image 1 = i, Image 2 = j" with ``PAIRWISE_TEMPLATE``, parsed with ``PAIRWISE_PATTERN``
  ``Image\\s*([12])\\s*is\\s*better`` (last match); the reward of row i is its win rate
  ``w_i = (wins of i) / (judged pairs with i)``. With the default GRPO credit (``credit.kind=grpo``)
  the advantage is then GRPO's normalisation of the win rates, which is Pref-GRPO's advantage; do
  not stack ``credit.kind=pref_grpo`` on it (that would rank win rates again). A group must be scored
  in one call: keep ``sample.batch_size`` a multiple of ``sample.group_size``.
  ``both_orders=True`` also asks (j, i) and counts half a win per order (position-debiased, 2x cost).

Parse failures never crash: a pointwise answer without a score makes that row NaN (the trainer
masks it), a pairwise answer naming no image drops that pair (a row with no judged pair is NaN);
both are counted in ``parse_failures`` (and ``requests``). A response that is not a chat completion
(no ``choices[0].message.content``) is ONE ValueError naming the endpoint: that is a wrong server or
protocol, not a judgement. At construction ``GET /v1/models`` checks the server (unreachable, non-JSON
or no models: one ValueError) and picks the first model when ``model`` is not given. Transport faults
(connection, timeout, 5xx) are retried with backoff as for ``remote:URL`` (``remote.post_with_retries``).

Departures: the templates are paraphrases in the UnifiedReward format, not the checkpoints' exact
training prompts (pass ``template=`` with the model's own); sampling is greedy (``temperature`` 0).
"""

from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from typing import Any

import torch
from torch import Tensor

from .base import Reward
from .remote import encode_png, post_with_retries

POINTWISE_TEMPLATE = (
    "You are given a text caption and an image generated from it. Evaluate the image on two criteria:\n"
    "1. Alignment with the caption: the objects, their attributes, counts and relations it describes.\n"
    "2. Overall image quality: clarity, detail, colour and aesthetic appeal.\n"
    "Based on these criteria, give a score from 1 to 5 after 'Final Score:'.\n"
    "Text Caption: [{prompt}]"
)
POINTWISE_PATTERN = re.compile(r"Final Score:\s*([1-5](?:\.\d+)?)")
PAIRWISE_TEMPLATE = (
    "You are given a caption and two images generated from it (Image 1 first, Image 2 second). Compare them "
    "on semantic consistency with the caption, aesthetics and authenticity, then end with exactly "
    "'Image 1 is better' or 'Image 2 is better'.\nText Caption: [{prompt}]"
)
PAIRWISE_PATTERN = re.compile(r"Image\s*([12])\s*is\s*better")


class JudgeClient:
    """The chat endpoint: one health check at construction, ``ask(images, text) -> str``."""

    def __init__(self, url: str, model: str | None, timeout: float, retries: int, backoff: float, max_tokens: int):
        import httpx

        self.url, self.retries, self.backoff, self.max_tokens = url.rstrip("/"), retries, backoff, max_tokens
        self.client = httpx.Client(timeout=timeout)
        self.model = self._check(model)

    def _check(self, model: str | None) -> str:
        import httpx

        where = f"{self.url}/v1/models"
        try:
            resp = self.client.get(where)
            listed = [m["id"] for m in resp.json()["data"]]
        except httpx.HTTPError as err:
            raise ValueError(f"judge: cannot reach {where} ({type(err).__name__}: {err}); start the server.") from None
        except (ValueError, KeyError, TypeError):
            raise ValueError(
                f"judge: {where} answered HTTP {resp.status_code} {resp.text[:80]!r}, not an OpenAI model list; "
                f"pass the base URL of an OpenAI-compatible server (vLLM / SGLang), without /v1."
            ) from None
        if not listed or (model is not None and model not in listed):
            raise ValueError(f"judge: model {model!r} is not served at {self.url} (it serves {listed}).")
        return model or listed[0]

    def ask(self, images: list[Tensor], text: str) -> str:
        content = [
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encode_png(x)}"}} for x in images
        ]
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": [*content, {"type": "text", "text": text}]}],
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }
        where = f"{self.url}/v1/chat/completions"
        resp = post_with_retries(self.client, where, body, self.retries, self.backoff)
        try:
            out = resp.json()
            answer = out["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            answer = None
        if resp.status_code >= 400 or not isinstance(answer, str):
            raise ValueError(
                f"judge: {where} answered HTTP {resp.status_code} {resp.text[:120]!r}: an unknown response format "
                f"(expected an OpenAI chat completion with choices[0].message.content)."
            )
        return answer


def parse_pointwise(answer: str) -> float | None:
    m = POINTWISE_PATTERN.search(answer)
    return float(m.group(1)) if m else None


def parse_pairwise(answer: str) -> int | None:
    """0 if Image 1 is preferred, 1 if Image 2, None when the answer names neither (last mention wins)."""
    found = PAIRWISE_PATTERN.findall(answer)
    return int(found[-1]) - 1 if found else None


class _Judge(Reward):
    differentiable = False
    batch_size = 1 << 30  # a whole batch per call: groups must be complete (pairwise)

    def __init__(self, client: JudgeClient, template: str, concurrency: int):
        super().__init__()
        self.judge, self.template, self.concurrency = client, template, concurrency
        self.parse_failures = self.requests = 0
        self.freeze()

    def _map(self, fn, items: list) -> list:
        if self.concurrency == 1 or len(items) < 2:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(min(self.concurrency, len(items))) as pool:
            return list(pool.map(fn, items))


class PointwiseJudge(_Judge):
    """UnifiedReward-style 1-5 score / max_score per image; NaN where the answer has no score."""

    name = "vlm_judge"

    def __init__(self, client: JudgeClient, template: str, concurrency: int, max_score: float):
        super().__init__(client, template, concurrency)
        self.max_score = max_score

    def score(self, images: Tensor, prompts: list[str], **metadata: Any) -> Tensor:
        answers = self._map(
            lambda i: self.judge.ask([images[i]], self.template.format(prompt=prompts[i])), list(range(len(prompts)))
        )
        scores = [parse_pointwise(a) for a in answers]
        self.requests += len(answers)
        self.parse_failures += sum(s is None for s in scores)
        return torch.tensor([math.nan if s is None else s / self.max_score for s in scores], dtype=torch.float32)


class PairwiseJudge(_Judge):
    """Pref-GRPO's group win rate from a pairwise VLM judge; see the module docstring."""

    name = "vlm_pairwise"

    def __init__(self, client: JudgeClient, template: str, concurrency: int, both_orders: bool):
        super().__init__(client, template, concurrency)
        self.both_orders = both_orders

    def prefer(self, a: Tensor, b: Tensor, prompt: str) -> int | None:
        """0: a is better, 1: b is better, None: unparseable (counted)."""
        choice = parse_pairwise(self.judge.ask([a, b], self.template.format(prompt=prompt)))
        self.requests += 1
        self.parse_failures += choice is None
        return choice

    def score(self, images: Tensor, prompts: list[str], **metadata: Any) -> Tensor:
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(p, []).append(i)
        asks = [(i, j) for rows in groups.values() for i, j in combinations(rows, 2)]
        if self.both_orders:
            asks += [(j, i) for i, j in asks]
        choices = self._map(lambda ij: self.prefer(images[ij[0]], images[ij[1]], prompts[ij[0]]), asks)
        wins, judged = torch.zeros(len(prompts)), torch.zeros(len(prompts))
        for (i, j), c in zip(asks, choices):
            if c is not None:
                wins[(i, j)[c]] += 1.0
                judged[i] += 1.0
                judged[j] += 1.0
        return torch.where(judged > 0, wins / judged.clamp_min(1), torch.full_like(wins, math.nan))

    def consistency(self, a: Tensor, b: Tensor, prompts: list[str]) -> float:
        """Fraction of pairs whose answers for (a, b) and (b, a) are complementary (a parse failure: not)."""
        fwd = self._map(lambda i: self.prefer(a[i], b[i], prompts[i]), list(range(len(prompts))))
        bwd = self._map(lambda i: self.prefer(b[i], a[i], prompts[i]), list(range(len(prompts))))
        return sum(f is not None and g is not None and f != g for f, g in zip(fwd, bwd)) / max(1, len(prompts))


def _client(url, model, timeout, retries, backoff, max_tokens, path) -> JudgeClient:
    if path is not None:
        raise ValueError(f"judge: path={path!r} is not used; the model lives on the server at url=.")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"judge: url={url!r}; pass the server's base URL, e.g. url='http://127.0.0.1:30000'.")
    if timeout <= 0 or retries < 0 or backoff < 0 or max_tokens < 1:
        raise ValueError("judge: timeout > 0, retries >= 0, backoff >= 0 and max_tokens >= 1 are required.")
    return JudgeClient(url, model, float(timeout), int(retries), float(backoff), int(max_tokens))


def load_vlm_judge(
    url: Any = None,
    model: str | None = None,
    template: str = POINTWISE_TEMPLATE,
    max_score: float = 5.0,
    timeout: float = 120.0,
    retries: int = 3,
    backoff: float = 0.5,
    concurrency: int = 8,
    max_tokens: int = 512,
    path: Any = None,
    device: Any = None,
) -> PointwiseJudge:
    """Pointwise VLM judge at ``url`` (``{prompt}`` in ``template`` is the caption)."""
    client = _client(url, model, timeout, retries, backoff, max_tokens, path)
    return PointwiseJudge(client, template, max(1, int(concurrency)), float(max_score))


def load_vlm_pairwise(
    url: Any = None,
    model: str | None = None,
    template: str = PAIRWISE_TEMPLATE,
    both_orders: bool = False,
    timeout: float = 120.0,
    retries: int = 3,
    backoff: float = 0.5,
    concurrency: int = 8,
    max_tokens: int = 512,
    path: Any = None,
    device: Any = None,
) -> PairwiseJudge:
    """Pairwise VLM judge at ``url`` whose reward is each row's win rate inside its prompt group."""
    client = _client(url, model, timeout, retries, backoff, max_tokens, path)
    return PairwiseJudge(client, template, max(1, int(concurrency)), bool(both_orders))
