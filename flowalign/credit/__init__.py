"""Credit assignment: every scheme maps rewards (+ ladders / trees) to ``Advantages`` [B, T] + mask.

``CREDIT`` maps a name to a function; the trainer picks one by ``cfg.credit.name``.
"""
from .group import grpo, group_stats, normalize

CREDIT = {"grpo": grpo}

__all__ = ["CREDIT", "grpo", "group_stats", "normalize"]
