"""Run logging for the trainer: tensorboard event files always (main process), Weights & Biases
when installed and asked for, and ``metrics.jsonl`` (one JSON object per logged iteration) that
benchmarks and tests read back. Eval grids are also written as PNG under ``<run>/eval/``."""

from __future__ import annotations

import json
from pathlib import Path

from torch import Tensor

from ..overrides import to_dict


class RunLogger:
    """Tensorboard always (main process), wandb when installed and asked, and metrics.jsonl."""

    def __init__(self, run_dir: Path, cfg, active: bool):
        self.active, self.run_dir, self.wandb = active, run_dir, None
        if not active:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"))
        if cfg.log.wandb:
            try:
                import wandb

                self.wandb = wandb.init(
                    project=cfg.log.wandb_project, name=run_dir.name, config=to_dict(cfg), dir=str(run_dir)
                )
            except ImportError:
                print("log.wandb=true but wandb is not installed (pip install wandb); logging to tensorboard only.")

    def scalars(self, values: dict[str, float], step: int) -> None:
        if not self.active:
            return
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"iteration": step, **values}) + "\n")

    def image(self, tag: str, grid: Tensor, step: int) -> None:
        if not self.active:
            return
        from torchvision.utils import save_image

        self.tb.add_image(tag, grid, step)
        (self.run_dir / "eval").mkdir(exist_ok=True)
        save_image(grid, str(self.run_dir / "eval" / f"iter_{step:06d}.png"))
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(grid.permute(1, 2, 0).numpy())}, step=step)

    def close(self) -> None:
        if self.active:
            self.tb.close()
            if self.wandb is not None:
                self.wandb.finish()
