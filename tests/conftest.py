"""Shared fixtures: tiny offline SD3 / Flux pipelines and their FlowModel adapters.

Importing this file forces offline mode and 1 torch thread (2 with FLOWALIGN_TEST_THREADS=2; the
test machines have 2 cores shared with other jobs). The session-scoped pipelines/models are shared:
tests must not mutate their weights (build a fresh ``tiny_sd3_pipeline()`` for that; it takes ~0.2 s).
"""

from __future__ import annotations

import os
import sys

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread by default: on the shared 2-core machines a second OpenMP thread that gets descheduled
# makes every tiny op wait (measured 3-5x slower under load); FLOWALIGN_TEST_THREADS=2 to override.
torch.set_num_threads(max(1, min(2, int(os.environ.get("FLOWALIGN_TEST_THREADS", "1")))))

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, _ROOT)

FLUX_MAX_SEQ = 32  # tiny T5 prompts: the Flux pipeline must be called with the same value


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_sd3_pipe():
    from flowalign.models.tiny import tiny_sd3_pipeline

    return _quiet(tiny_sd3_pipeline(seed=0))


@pytest.fixture(scope="session")
def tiny_flux_pipe():
    from flowalign.models.tiny import tiny_flux_pipeline

    return _quiet(tiny_flux_pipeline(seed=0))


@pytest.fixture(scope="session")
def sd3_model(tiny_sd3_pipe):
    from flowalign.models import SD3Model

    return SD3Model(tiny_sd3_pipe)


@pytest.fixture(scope="session")
def flux_model(tiny_flux_pipe):
    from flowalign.models import FluxModel

    return FluxModel(tiny_flux_pipe, max_sequence_length=FLUX_MAX_SEQ)
