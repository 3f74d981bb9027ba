"""No evaluation on the pairs a rubric set learned from.

``rubric_learning.learn`` records in ``rubric_set.json`` (``training.pairs``) the data source and
a :func:`~rubric_learning.pairs.pair_hash` of every training and validation pair. Before scoring,
``eval.preference`` finds the rubric sets its reward uses (every ``rubric_set`` path in the reward
node, or ``leakage.rubric_sets``), and compares the benchmark's pairs with them:

- ``leakage.policy=exclude`` (default): pairs a rubric set learned from are left out, and the
  report says how many and from which set;
- ``refuse``: any overlap stops the run with a message naming the counts and the fix;
- ``ignore``: evaluate every pair (the report still counts the overlap).

A rubric set written before this record existed has no hashes: the check says so and goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from rewards.rubric import resolve_rubric_set_path
from rewards.rubric_set import load_rubric_set
from rubric_learning.pairs import PreferencePair, pair_hash

log = logging.getLogger(__name__)

LEAKAGE_POLICIES = ("exclude", "refuse", "ignore")


class LeakageError(ValueError):
    """The benchmark holds pairs that a rubric set in the reward learned from (or the leakage
    policy is unknown)."""


def rubric_set_paths(node: Any) -> list[str]:
    """Every ``rubric_set`` path in a (nested) reward config node, in order, without repeats."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, (DictConfig, dict)):
            for key, child in value.items():
                if key == "rubric_set" and isinstance(child, str) and child not in found:
                    found.append(child)
                else:
                    walk(child)
        elif isinstance(value, (ListConfig, list, tuple)):
            for child in value:
                walk(child)

    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=True)
    walk(node)
    return found


def learned_pairs(path: str) -> tuple[set[str], str]:
    """The training + validation pair hashes a rubric set records, and its data source in words."""
    rubric_set = load_rubric_set(resolve_rubric_set_path(path))
    record = rubric_set.training.get("pairs")
    if not isinstance(record, dict):
        return set(), "no record of its training pairs"
    hashes = {str(h) for split in ("train", "val") for h in record.get(split, [])}
    source = record.get("source", {})
    if isinstance(source, dict):
        source = source.get("path") or source.get("_target_")
    return hashes, f"learned from {source}"


def apply_leakage_policy(
    pairs: Sequence[PreferencePair], rubric_sets: Sequence[str], policy: str = "exclude"
) -> tuple[list[PreferencePair], dict[str, Any]]:
    """The pairs to evaluate under ``policy``, and what the check found (for the report)."""
    if policy not in LEAKAGE_POLICIES:
        raise LeakageError(f"leakage.policy must be one of {LEAKAGE_POLICIES}, got {policy!r}")
    report: dict[str, Any] = {"policy": policy, "rubric_sets": {}, "excluded": 0}
    if not rubric_sets:
        report["summary"] = "no rubric set in the reward: nothing to check"
        return list(pairs), report
    learned: set[str] = set()
    unrecorded = []
    for path in rubric_sets:
        hashes, source = learned_pairs(path)
        report["rubric_sets"][str(path)] = {"learned_pairs": len(hashes), "source": source}
        learned |= hashes
        if not hashes:
            unrecorded.append(str(path))
    seen = [pair_hash(p) in learned for p in pairs]
    overlap = sum(seen)
    report["overlapping"] = overlap
    names = ", ".join(str(Path(p)) for p in rubric_sets)
    if overlap and policy == "refuse":
        raise LeakageError(
            f"{overlap} of {len(pairs)} pairs to evaluate were used to learn {names} "
            "(training or validation pairs). Evaluate on a disjoint split, or set "
            "leakage.policy=exclude to leave them out."
        )
    if overlap and policy == "exclude":
        pairs = [p for p, used in zip(pairs, seen) if not used]
        report["excluded"] = overlap
        summary = f"{overlap} pairs left out ({names} learned from them), {len(pairs)} evaluated"
    elif overlap:
        summary = f"{overlap} evaluated pairs were used to learn {names} (policy ignore)"
    else:
        summary = f"none of the pairs {names} learned from"
    if unrecorded:
        summary += f"; no record of training pairs in {', '.join(unrecorded)} (not checked)"
    report["summary"] = summary
    if overlap or unrecorded:
        log.warning("leakage check: %s", summary)
    return list(pairs), report


def check_leakage(
    pairs: Sequence[PreferencePair], cfg: DictConfig
) -> tuple[list[PreferencePair], dict[str, Any]]:
    """:func:`apply_leakage_policy` with the ``leakage`` node of an ``eval.preference`` config:
    ``policy``, and ``rubric_sets`` (null: the rubric sets named in the ``reward`` node)."""
    node = cfg.get("leakage") or {}
    rubric_sets = node.get("rubric_sets") or rubric_set_paths(cfg.get("reward"))
    kept, report = apply_leakage_policy(pairs, list(rubric_sets), node.get("policy", "exclude"))
    if pairs and not kept:
        raise LeakageError(
            f"all {len(pairs)} pairs were used to learn the rubric set(s): {report['summary']}. "
            "Evaluate on a disjoint split."
        )
    return kept, report
