"""Held-out rewards during training (``eval_rewards``): watch reward hacking while it happens.

Every ``every_n_epochs`` epochs and after every checkpoint, rank 0 samples the eval prompts with
the trained weights (the EMA's when enabled) by the deterministic ODE from the same start noise
each time, and scores the images with the training reward and with each held-out reward (e.g.
train on the rubric reward, watch PickScore, HPSv3 and CLIPScore). The scores go into
``metrics.jsonl`` beside the training reward as ``eval/train_reward``, ``eval/<name>`` and the
rewards' details (for a rubric reward, one value per rule: ``eval/train/rubric/<rule>``), and into
``heldout_curve.png`` with the per-rule curves, so a user sees which rule is being gamed.

The divergence warning fires when, over the last ``patience`` evaluations, the training reward on
the eval prompts rose every time while a held-out reward fell every time: the proxy is being
optimised at the expense of what it stands for. An empty ``rewards`` list builds nothing and
samples nothing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rewards import Reward, RewardOutput, build_reward

log = logging.getLogger(__name__)

CURVE_FILE = "heldout_curve.png"


@dataclass
class EvalRewardsSection:
    """``eval_rewards`` of conf/train.yaml.

    Attributes:
        rewards: name -> reward config (as conf/reward/*.yaml); empty: off, at no cost.
        prompts: the eval prompts (null: the first ``num_prompts`` training prompts).
        num_prompts: how many training prompts stand in when ``prompts`` is null.
        every_n_epochs: evaluate after every this many epochs (and after every checkpoint).
        patience: K, the evaluations in a row of rising training and falling held-out reward
            that make the divergence warning fire.
        seed: the eval start noise (the same at every evaluation).
    """

    rewards: dict[str, Any] = field(default_factory=dict)
    prompts: list[str] | None = None
    num_prompts: int = 8
    every_n_epochs: int = 5
    patience: int = 3
    seed: int = 1234


class DivergenceMonitor:
    """Remembers the training and held-out rewards of each evaluation and says which held-out
    rewards fell while the training reward rose at each of the last ``patience`` evaluations."""

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ValueError(f"eval_rewards.patience={patience} must be >= 1")
        self.patience = patience
        self.history: list[dict[str, float]] = []

    def update(self, values: dict[str, float], train_key: str = "train_reward") -> list[str]:
        """Add one evaluation (``train_key`` and one value per held-out reward); return the
        held-out rewards diverging from the training reward."""
        self.history.append(dict(values))
        recent = self.history[-(self.patience + 1) :]
        if len(recent) <= self.patience:
            return []

        def rising(key: str, sign: float) -> bool:
            return all(sign * (b[key] - a[key]) > 0 for a, b in zip(recent, recent[1:]))

        if not rising(train_key, 1.0):
            return []
        return [k for k in values if k != train_key and rising(k, -1.0)]

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state["history"]]


class HeldOutEvaluator:
    """Builds the held-out rewards once and evaluates them on demand (rank 0)."""

    def __init__(self, section: EvalRewardsSection, train_prompts: list[str]) -> None:
        self.section = section
        self.prompts = list(section.prompts or train_prompts[: section.num_prompts])
        self.rewards: dict[str, Reward] = {
            name: build_reward(node) for name, node in section.rewards.items()
        }
        self.monitor = DivergenceMonitor(section.patience)

    def due(self, epochs_done: int, checkpointed: bool) -> bool:
        every = self.section.every_n_epochs
        return bool(self.rewards) and (checkpointed or (every > 0 and epochs_done % every == 0))

    def evaluate(self, images: torch.Tensor, train_reward: Reward) -> dict[str, float]:
        """Score ``images`` (of :attr:`prompts`) with the training and held-out rewards; return
        the logged values, warning about each diverging held-out reward."""
        row: dict[str, float] = {}
        plain: dict[str, float] = {}
        for name, reward in [("train_reward", train_reward), *self.rewards.items()]:
            out = reward(images, self.prompts, [{} for _ in self.prompts])
            details = "eval/train" if name == "train_reward" else f"eval/{name}"
            row |= summarise(f"eval/{name}", details, out)
            plain[name] = row[f"eval/{name}"]
        for name in self.monitor.update(plain):
            log.warning(
                "eval_rewards: the training reward rose while %s fell at each of the last %d "
                "evaluations (%s) - the policy may be gaming the training reward",
                name,
                self.section.patience,
                ", ".join(
                    f"{h[name]:.4f}" for h in self.monitor.history[-self.section.patience - 1 :]
                ),
            )
            row[f"eval/{name}/diverging"] = 1.0
        return row

    def release(self) -> None:
        for reward in self.rewards.values():
            reward.release()


def summarise(key: str, details: str, out: RewardOutput) -> dict[str, float]:
    """The mean score (NaN left out) as ``key`` and each detail's mean as ``details/<name>``."""
    row = {key: float(out.scores.float().nanmean())}
    for name, values in sorted(out.details.items()):
        row[f"{details}/{name}"] = float(values.float().nanmean())
    return row


def eval_rollout_config(rollout: Any) -> Any:
    """The training rollout settings made deterministic: every step an Euler ODE step."""
    return replace(
        rollout, noise_level=0.0, sde_window=None, sde_window_size=0, sde_window_range=None
    )


def plot_heldout(rows: list[dict[str, Any]], out_path: Path) -> Path | None:
    """``heldout_curve.png``: each evaluated reward's change since the first evaluation, and the
    per-rule curves (training rollouts and eval prompts). None when no row was evaluated."""
    evaluated = [r for r in rows if "eval/train_reward" in r]
    if not evaluated:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_rules) = plt.subplots(1, 2, figsize=(11, 4))
    names = [k for k in evaluated[0] if k.startswith("eval/") and k.count("/") == 1]
    epochs = [r["epoch"] for r in evaluated]
    for key in names:
        first = evaluated[0][key]
        ax_r.plot(epochs, [r[key] - first for r in evaluated], marker="o", ms=3,
                  label=key.removeprefix("eval/"))  # fmt: skip
    ax_r.axhline(0, color="grey", lw=0.5)
    ax_r.set(xlabel="epoch", ylabel="change since the first evaluation",
             title="rewards on the eval prompts")  # fmt: skip
    ax_r.legend(fontsize=7)
    ax_r.grid(alpha=0.3)
    rules = sorted({k for r in rows for k in r if k.startswith("reward/") and "/" in k[7:]})
    for key in rules:
        ax_rules.plot([r["epoch"] for r in rows], [r.get(key) for r in rows], lw=1,
                      label=key.removeprefix("reward/"))  # fmt: skip
    ax_rules.set(xlabel="epoch", ylabel="mean score",
                 title="per-rule reward of the training rollouts")  # fmt: skip
    if rules:
        ax_rules.legend(fontsize=6)
    ax_rules.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
