"""What a run leaves to read: metrics.jsonl, sample grids, a reward-curve PNG, and wandb.

Only rank 0 creates a :class:`RunLogger` that writes; other ranks get one with ``enabled=False``
whose methods do nothing. ``metrics.jsonl`` has one JSON object per epoch; a resumed run first
drops the lines of epochs it is about to redo, so the file reads as if the run never stopped; a
torn last line (a process killed while appending it) is dropped with a warning, any other
unreadable line is an error naming the file and the line.
wandb runs in the configured mode (online, offline, disabled) and keeps its run id in the run
folder so a resumed run continues the same wandb run.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from rewards.images import to_pil

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CURVE_FILE = "reward_curve.png"


class RunLogger:
    """Writes the run's metrics, sample images and plots (rank 0), mirrors them to wandb."""

    def __init__(
        self, run_dir: Path, logger_cfg: dict[str, Any], config: dict[str, Any], enabled: bool
    ) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.path = run_dir / METRICS_FILE
        self.wandb = None
        if enabled and logger_cfg.get("mode", "disabled") != "disabled":
            self.wandb = _init_wandb(run_dir, logger_cfg, config)

    def restore(self, epoch: int, last_row: dict[str, Any]) -> None:
        """Prepare metrics.jsonl for a run resumed after ``epoch`` epochs: drop the lines of the
        epochs it will redo, and put back the checkpoint's own line (``last_row``) if missing."""
        if not self.enabled:
            return
        rows = read_rows(self.path, repair_last=True) if self.path.exists() else []
        kept = [row for row in rows if row["epoch"] <= epoch]
        if not kept or kept[-1]["epoch"] != last_row["epoch"]:
            kept.append(last_row)
        self.path.write_text("".join(json.dumps(row) + "\n" for row in kept))

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch's metrics (JSON-safe scalars) and send them to wandb."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log(row, step=row["epoch"])

    def save_samples(
        self, epoch: int, images: torch.Tensor, prompts: Sequence[str], rewards: torch.Tensor
    ) -> Path | None:
        """Save a grid of images with their rewards as ``samples/epoch_NNNNNN.png``."""
        if not self.enabled:
            return None
        grid = sample_grid(to_pil(images), [f"{float(r):.3f}" for r in rewards])
        path = self.run_dir / "samples" / f"epoch_{epoch:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        if self.wandb is not None:
            import wandb

            caption = " | ".join(f"{p[:40]}: {float(r):.3f}" for p, r in zip(prompts, rewards))
            self.wandb.log({"samples": wandb.Image(grid, caption=caption)}, step=epoch)
        return path

    def finish(self) -> Path | None:
        """Draw the reward curve from metrics.jsonl and close wandb."""
        if not self.enabled or not self.path.exists():
            return None
        path = plot_reward_curve(self.path, self.run_dir / CURVE_FILE)
        if self.wandb is not None:
            import wandb

            self.wandb.log({"reward_curve": wandb.Image(str(path))})
            self.wandb.finish()
        return path


def _init_wandb(run_dir: Path, logger_cfg: dict[str, Any], config: dict[str, Any]):
    import wandb

    id_file = run_dir / "wandb_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    return wandb.init(
        project=logger_cfg.get("project"),
        entity=logger_cfg.get("entity"),
        name=logger_cfg.get("name"),
        tags=list(logger_cfg.get("tags") or []),
        mode=logger_cfg["mode"],
        dir=str(run_dir),
        config=config,
        id=run_id,
        resume="allow",
    )


class MetricsFileError(ValueError):
    """A metrics.jsonl line that is not a JSON object (other than a torn last line)."""


def read_rows(metrics_path: Path, repair_last: bool = False) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl file. With ``repair_last``, a last line that does not parse
    (cut short when the process was killed while writing it) is left out with a warning."""
    lines = [(n, line) for n, line in enumerate(metrics_path.read_text().splitlines(), 1)]
    lines = [(n, line) for n, line in lines if line.strip()]
    rows = []
    for position, (number, line) in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if repair_last and position == len(lines) - 1:
                log.warning(
                    "%s: last line %d was cut short (%s: ...%r); dropped on resume",
                    metrics_path,
                    number,
                    err.msg,
                    line[-40:],
                )
                break
            raise MetricsFileError(f"{metrics_path}: line {number} is not JSON ({err})") from None
        if not isinstance(row, dict) or "epoch" not in row:
            raise MetricsFileError(f"{metrics_path}: line {number} is not a metrics row")
        rows.append(row)
    return rows


def sample_grid(images: list[Image.Image], captions: list[str], min_side: int = 128) -> Image.Image:
    """Images in a near-square grid, each upscaled to at least ``min_side`` px with its caption."""
    scale = max(1, math.ceil(min_side / max(images[0].size)))
    w, h = images[0].width * scale, images[0].height * scale
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    text_h = 14
    grid = Image.new("RGB", (cols * w, rows * (h + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % cols) * w, (i // cols) * (h + text_h)
        grid.paste(image.resize((w, h), Image.NEAREST), (x, y))
        draw.text((x + 2, y + h + 1), caption, fill="black")
    return grid


def plot_reward_curve(metrics_path: Path, out_path: Path) -> Path:
    """Reward mean +- std and the KL per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(metrics_path)
    epochs = [r["epoch"] for r in rows]
    mean = [r["reward_mean"] for r in rows]
    std = [r["reward_std"] for r in rows]
    fig, (ax_r, ax_kl) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_r.plot(epochs, mean, marker="o", ms=3, label="reward mean")
    ax_r.fill_between(
        epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)], alpha=0.25
    )
    ax_r.set(xlabel="epoch", ylabel="reward", title="reward per epoch (mean ± std)")
    ax_r.grid(alpha=0.3)
    ax_kl.plot(epochs, [r["kl"] for r in rows], marker="o", ms=3, color="tab:red")
    ax_kl.set(
        xlabel="epoch",
        ylabel="KL to reference",
        title="KL to the reference (computed when beta > 0)",
    )
    ax_kl.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
