"""Reward ladders: rewards of intermediate states, for dense credit, turning points, G^2RPO and FK.

The reward of a state x_j at sigma_j is the reward of a clean image reached from it:
* ``mode="ode"``: an ODE completion from x_j down to 0 (DenseGRPO, arXiv 2601.20218, "n = t";
  TP-GRPO's R_k; G^2RPO, arXiv 2510.01982) over ``sampling.rollout.completion_grid`` — all remaining
  steps (default), every ``stride``-th point (G^2RPO's granularity lambda) or ``num_steps`` steps;
* ``mode="x0"``: the one-step prediction x0_pred = x_j - sigma_j v(x_j) (FK steering's default
  potential; Stepwise-Flow-GRPO).

What is shared, all exactly (no approximation beyond the chosen grid):
1. the ODE completion from x_j starts with an Euler step from x_j. When rollout step j was itself an
   ODE step (noise level 0) and the completion grid from j is [j] + the grid from j+1, that
   completion *is* the completion of x_{j+1}: reward(j) = reward(j+1) at no cost (``share_ode_steps``;
   assumes the rollout's ODE steps were plain Euler, i.e. no guidance drift — pass False otherwise).
   A state after which every step is ODE therefore costs nothing: its completion is the final image;
2. the rollout already evaluated the velocity at every state; with ``Rollout.x0_preds`` kept
   (``rollout(..., keep_x0=True)``) it is recovered as v = (x - x0_pred) / sigma (to fp32 rounding),
   so each completion's first step and every x0-mode reward cost no evaluation (``reuse_velocity``;
   only valid while the weights are those that sampled the rollout);
3. identical states (a group sharing its initial noise, shared tree prefixes) are completed once:
   requests are keyed by (grid index, bytes of the state, prompt + guidance or a digest of the
   conditioning row), and finished rewards stay in an LRU cache across calls (``cache_size``).
All pending completions advance together along the sigma grid ("staircase" batching): at grid index
i every completion currently at sigma_i takes its step in one velocity call (chunks of
``max_batch`` rows), so a ladder of T states costs at most T model calls, not T(T+1)/2.

NFE accounting: ``naive_nfe`` is completing every requested state separately with all its
remaining steps, sum_j (T - j) per sample (the DenseGRPO / TP-GRPO cost); ``nfe`` what was spent.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..sampling.rollout import completion_grid
from ..sampling.sde import ode
from ..types import Cond, Rollout, TreeRollout


@dataclass
class LadderOut:
    rewards: Tensor  # [B, T+1] fp32 (rollouts) or [N] (tree nodes); NaN where not requested
    nfe: int  # velocity evaluations spent by this call (per row, CFG counted once)
    naive_nfe: int  # every requested state completed separately with all its remaining steps
    scored: int  # distinct states decoded and scored in this call (after sharing, dedup and cache)
    reused: int  # requested states served by ODE-step sharing, deduplication or the cache (= requested - scored)


def _digest(t: Tensor) -> bytes:
    return hashlib.blake2b(t.detach().float().contiguous().cpu().numpy().tobytes(), digest_size=16).digest()


class RewardLadder:
    def __init__(
        self,
        model,
        reward: Callable[..., Tensor],
        *,
        mode: str = "ode",
        num_steps: int | None = None,
        stride: int | None = None,
        share_ode_steps: bool = True,
        reuse_velocity: bool = True,
        max_batch: int = 64,
        cache_size: int = 4096,
        decode: Callable[[Tensor], Tensor] | None = None,
    ):
        if mode not in ("ode", "x0"):
            raise ValueError(f"ladder mode={mode!r}; use 'ode' (ODE completion) or 'x0' (one-step x0_pred).")
        if mode == "x0" and (num_steps is not None or stride is not None):
            raise ValueError("num_steps / stride apply to mode='ode' only.")
        self.model, self.reward, self.mode = model, reward, mode
        self.num_steps, self.stride = num_steps, stride
        self.share_ode_steps, self.reuse_velocity = share_ode_steps, reuse_velocity
        self.max_batch, self.cache_size = max_batch, cache_size
        self.decode = decode or model.decode
        self.cache: OrderedDict[tuple, float] = OrderedDict()

    def clear_cache(self) -> None:
        self.cache.clear()

    # --- grids ---------------------------------------------------------------------------------
    def _grid(self, sigmas: Tensor, j: int) -> list[int]:
        """Indices into ``sigmas`` of the completion from index j (mode 'x0': one jump to the end)."""
        last = sigmas.numel() - 1
        if self.mode == "x0" or j == last:
            return [j, last] if j < last else [last]
        values = completion_grid(sigmas, j, self.num_steps, self.stride)
        return [int(torch.nonzero(sigmas == v)[0]) for v in values]

    def _shares_next(self, sigmas: Tensor, j: int, ode_step: bool) -> bool:
        return (
            self.mode == "ode"
            and self.share_ode_steps
            and ode_step
            and self._grid(sigmas, j)[1:] == self._grid(sigmas, j + 1)
        )

    # --- front ends ----------------------------------------------------------------------------
    def __call__(
        self,
        rollout: Rollout,
        cond: Cond,
        steps: Sequence[int] | None = None,
        prompts: Sequence[str] | None = None,
        **metadata: Any,
    ) -> LadderOut:
        """Rewards of ``rollout.latents[:, j]`` for j in ``steps`` (default all 0..T) -> [B, T+1]."""
        b, t = rollout.latents.shape[0], rollout.num_steps
        sigmas = rollout.sigmas.float().cpu()
        steps = list(range(t + 1)) if steps is None else sorted(set(int(j) for j in steps))
        if any(not 0 <= j <= t for j in steps):
            raise ValueError(f"ladder steps {steps} must lie in 0..{t} (states of a {t}-step rollout).")
        prompts = self._prompts(prompts, cond, b)
        canon = list(range(t + 1))  # state j -> the state whose completion it equals
        for j in range(t - 1, -1, -1):
            if self._shares_next(sigmas, j, float(rollout.noise_levels[j]) == 0.0):
                canon[j] = canon[j + 1]
        x0 = rollout.x0_preds if self.reuse_velocity else None
        reqs = [(bi, canon[j]) for bi in range(b) for j in steps]
        uniq = sorted(set(reqs))
        states = torch.stack([rollout.latents[bi, j] for bi, j in uniq]) if uniq else rollout.latents[:0, 0]
        v0 = [None if (x0 is None or j >= t) else (rollout.latents[bi, j] - x0[bi, j]) / sigmas[j] for bi, j in uniq]
        scores, nfe, done, hit = self._score(
            states, [j for _, j in uniq], [bi for bi, _ in uniq], v0, sigmas, cond, prompts, metadata
        )
        table = torch.full((b, t + 1), float("nan"))
        lookup = dict(zip(uniq, scores.tolist()))
        for bi in range(b):
            for j in steps:
                table[bi, j] = lookup[(bi, canon[j])]
        naive = b * sum(t - j for j in steps)
        return LadderOut(table, nfe, naive, done, len(reqs) - done)

    def tree(
        self,
        tree: TreeRollout,
        cond: Cond,
        nodes: Sequence[int] | Tensor | None = None,
        prompts: Sequence[str] | None = None,
        **metadata: Any,
    ) -> LadderOut:
        """Rewards of tree nodes -> [N] (NaN where not requested). ``cond``, ``prompts`` and
        ``metadata`` have one row per root, indexed by ``tree.root``."""
        n_nodes, t = tree.num_nodes, tree.sigmas.numel() - 1
        sigmas = tree.sigmas.float().cpu()
        nodes = list(range(n_nodes)) if nodes is None else sorted(set(int(n) for n in torch.as_tensor(nodes).tolist()))
        prompts = self._prompts(prompts, cond, cond.batch_size)
        canon = list(range(n_nodes))
        order = sorted(range(n_nodes), key=lambda n: -int(tree.step[n]))  # children before parents
        for c in order:
            p = int(tree.parent[c])
            if (
                p >= 0
                and float(tree.noise_level[c]) == 0.0
                and float(tree.std[c]) == 0.0
                and self._shares_next(sigmas, int(tree.step[p]), True)
            ):
                canon[p] = canon[c]
        uniq = sorted(set(canon[n] for n in nodes))
        states = tree.latents[uniq] if uniq else tree.latents[:0]
        scores, nfe, done, _ = self._score(
            states,
            [int(tree.step[n]) for n in uniq],
            [int(tree.root[n]) for n in uniq],
            [None] * len(uniq),
            sigmas,
            cond,
            prompts,
            metadata,
        )
        out = torch.full((n_nodes,), float("nan"))
        lookup = dict(zip(uniq, scores.tolist()))
        for n in nodes:
            out[n] = lookup[canon[n]]
        naive = sum(t - int(tree.step[n]) for n in nodes)
        return LadderOut(out, nfe, naive, done, len(nodes) - done)

    @staticmethod
    def _prompts(prompts, cond: Cond, rows: int) -> list[str]:
        prompts = list(prompts) if prompts is not None else cond.prompts
        if prompts is None or len(prompts) != rows:
            raise ValueError(
                f"the ladder needs {rows} prompts for the reward: pass prompts=[...] or a Cond "
                f"with .prompts (got {None if prompts is None else len(prompts)})."
            )
        return prompts

    # --- core ----------------------------------------------------------------------------------
    def _row_key(self, cond: Cond, row: int, prompts: list[str], memo: dict[int, Any]) -> Any:
        if row not in memo:
            if cond.prompts is not None:
                memo[row] = (cond.prompts[row], float(cond.guidance_scale))
            else:
                memo[row] = b"".join(_digest(v[row]) for _, v in sorted(cond.embeds.items()))
        return memo[row]

    def _score(
        self,
        states: Tensor,
        starts: list[int],
        rows: list[int],
        v0: list[Tensor | None],
        sigmas: Tensor,
        cond: Cond,
        prompts: list[str],
        metadata: dict[str, Any],
    ) -> tuple[Tensor, int, int, int]:
        """Rewards [K] of states [K, *S] at grid indices ``starts``, cond rows ``rows``; dedup + cache."""
        memo: dict[int, Any] = {}
        keys = [(s, _digest(x), self._row_key(cond, r, prompts, memo)) for x, s, r in zip(states, starts, rows)]
        first: dict[tuple, int] = {}
        todo = [first.setdefault(k, i) for i, k in enumerate(keys) if k not in self.cache and k not in first]
        nfe0 = self.model.nfe
        if todo:
            finals = self._finish(
                states[todo], [starts[i] for i in todo], [rows[i] for i in todo], [v0[i] for i in todo], sigmas, cond
            )
            rows_t = [rows[i] for i in todo]
            meta = {k: _take(v, rows_t) for k, v in metadata.items()}
            vals = []
            for c in range(0, len(todo), self.max_batch):
                sl = slice(c, c + self.max_batch)
                with torch.no_grad():
                    images = self.decode(finals[sl])
                    val = self.reward(images, [prompts[r] for r in rows_t[sl]], **{k: v[sl] for k, v in meta.items()})
                    vals.append(getattr(val, "total", val).float().cpu())  # a MultiReward returns Scores
            for i, val in zip(todo, torch.cat(vals).tolist()):
                self.cache[keys[i]] = val
                self.cache.move_to_end(keys[i])
        out = torch.tensor([self.cache[k] for k in keys], dtype=torch.float32)
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out, self.model.nfe - nfe0, len(todo), len(keys) - len(todo)

    @torch.no_grad()
    def _finish(
        self, x: Tensor, starts: list[int], rows: list[int], v0: list[Tensor | None], sigmas: Tensor, cond: Cond
    ) -> Tensor:
        """Staircase batching: every state walks its grid; at index i all states sitting there take
        their step together. Mode 'x0' takes the single jump x - sigma v (= Euler step to sigma 0)."""
        x = x.float().clone()
        grids = [self._grid(sigmas, s) for s in starts]
        pos = [0] * len(grids)
        device = x.device
        for i in range(min(starts), sigmas.numel() - 1):
            active = [k for k, g in enumerate(grids) if pos[k] < len(g) - 1 and g[pos[k]] == i]
            if not active:
                continue
            v = torch.empty_like(x[active])
            need = [a for a, k in enumerate(active) if not (pos[k] == 0 and v0[k] is not None)]
            for a, k in enumerate(active):
                if pos[k] == 0 and v0[k] is not None:
                    v[a] = v0[k].to(device)
            for c in range(0, len(need), self.max_batch):
                idx = need[c : c + self.max_batch]
                ks = [active[a] for a in idx]
                v[idx] = self.model.velocity(x[ks], sigmas[i], cond.select([rows[k] for k in ks])).float()
            s_next = torch.stack([sigmas[grids[k][pos[k] + 1]] for k in active])
            x[active] = ode(x[active], v, sigmas[i], s_next.to(device)).x_next
            for k in active:
                pos[k] += 1
        return x


def _take(value: Any, rows: list[int]) -> Any:
    if torch.is_tensor(value):
        return value[torch.as_tensor(rows, dtype=torch.long, device=value.device)]
    if isinstance(value, (list, tuple)):
        return [value[r] for r in rows]
    return value
