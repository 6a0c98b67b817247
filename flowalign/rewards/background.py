"""Background-thread scoring, so rewards of batch k overlap the sampling of batch k+1.

As DDPO / Flow-GRPO do with a ``ThreadPoolExecutor``: ``submit`` returns a ``Future`` at once and
the reward runs on one worker thread (torch ops release the GIL). Scoring is gradient-free here
(grad mode is thread-local and off in the worker). On CUDA the worker runs on its own stream that
first waits for the work already queued on the caller's stream (so the images are ready), and it
synchronises that stream before the future resolves, so results are safe to use on any stream.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor


class BackgroundScorer:
    def __init__(self, reward: Callable[..., Any], max_workers: int = 1):
        self.reward = reward
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="flowalign-reward")
        self._streams: dict[int, Any] = {}

    def submit(self, images: Tensor, prompts, **metadata: Any) -> Future:
        """Score in the background; the images are detached (no graph crosses threads)."""
        images = images.detach()
        event = None
        if images.is_cuda:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(images.device))
        return self.pool.submit(self._run, images, prompts, event, metadata)

    def _run(self, images: Tensor, prompts, event, metadata: dict[str, Any]):
        with torch.no_grad():
            if event is None:
                return self.reward(images, prompts, **metadata)
            dev = images.device.index or 0
            stream = self._streams.setdefault(dev, torch.cuda.Stream(device=images.device))
            with torch.cuda.stream(stream):
                stream.wait_event(event)
                out = self.reward(images, prompts, **metadata)
            stream.synchronize()
            return out

    def close(self, wait: bool = True) -> None:
        self.pool.shutdown(wait=wait)

    def __enter__(self) -> BackgroundScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
