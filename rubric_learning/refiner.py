"""The refiner: L1-regularised logistic regression on rubric score differences, Top-N kept.

Features of a pair are ``d_k = s_k(A) - s_k(B)``, the label is 1 when A was preferred. The model
is ``P(A preferred) = sigmoid(w . d)`` with no intercept (a reward difference has no offset),
fitted on each pair and its mirror image (``-d``, ``1 - y``) so that the order in which a pair is
shown cannot matter. scikit-learn's liblinear solver with an L1 penalty zeroes weak and redundant
rubrics; the ``top_n`` rubrics with the largest positive weights are kept.

``nonnegative=False`` is the paper's procedure: one fit, the Top-N positive weights as they are
define the reward. ``nonnegative=True`` (the learner's default, ``conf/learn.yaml``) makes the
fitted model the deployed one: a rubric with a negative weight cannot be part of the reward, yet in
a single fit it can carry signal that its positive counterpart then lacks (``"the image is dark"``
with a negative weight instead of ``"the image is bright"`` with a positive one; their score
differences are exact opposites). So rubrics with negative weights are removed and the rest
refitted until no weight is negative, and when Top-N truncates, the kept rubrics are refitted once
more -- an active-set approximation of L1 logistic regression under ``w >= 0``. ``C`` (inverse
penalty strength) is given, or chosen on the validation split (see :func:`refine`).

:func:`entering` is the working-set method's optimality check: which rubrics outside the fit
(pruned earlier) it would now give a positive weight, so the learner can bring them back.

A feature that cannot be computed (the judge left one of the two scores NaN) is set to 0, i.e.
"this rubric says nothing about this pair", and counted in :attr:`RefinerResult.nan_features`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression

SELECTIONS = ("accuracy", "best", "one_se")


@dataclass
class RefinerResult:
    """The fit over the working set.

    ``weights``: the reward's weights, 0 outside the Top-N kept rubrics; ``kept``: their indices,
    largest weight first; ``fitted``: the fit's weights before Top-N truncation (its zeros are the
    rubrics the L1 penalty dropped, which the working set prunes).
    """

    weights: np.ndarray
    kept: list[int]
    C: float
    nan_features: int
    fitted: np.ndarray


def score_differences(scores: np.ndarray) -> tuple[np.ndarray, int]:
    """``[n, k, 2]`` scores -> ``[n, k]`` differences (A - B) with NaN set to 0, and NaN count."""
    diffs = scores[:, :, 0] - scores[:, :, 1]
    nan = np.isnan(diffs)
    return np.where(nan, 0.0, diffs), int(nan.sum())


def _l1_logistic(C: float, random_state: int) -> LogisticRegression:
    # scikit-learn 1.8 deprecated ``penalty`` in favour of ``l1_ratio``; before 1.8 liblinear
    # ignores ``l1_ratio`` and would silently fit an L2 model.
    major, minor = (int(x) for x in sklearn.__version__.split(".")[:2])
    penalty = {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}
    return LogisticRegression(
        C=C, solver="liblinear", fit_intercept=False, random_state=random_state, **penalty
    )


def fit_weights(
    diffs: np.ndarray, labels: np.ndarray, C: float, random_state: int = 0
) -> np.ndarray:
    """L1 logistic regression on the symmetrised pairs; returns one weight per rubric."""
    labels = np.asarray(labels, dtype=float)
    if diffs.shape[1] == 0:
        raise ValueError("the refiner got an empty working set: there are no rubrics to weigh")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("the refiner needs labels 0 or 1 (drop tied pairs first)")
    X = np.vstack([diffs, -diffs])
    y = np.concatenate([labels, 1 - labels]).astype(int)
    model = _l1_logistic(C, random_state).fit(X, y)
    return model.coef_.reshape(-1).astype(float)


def fit_nonnegative(
    diffs: np.ndarray, labels: np.ndarray, C: float, top_n: int, random_state: int = 0
) -> np.ndarray:
    """L1 fit restricted to at most ``top_n`` rubrics with positive weights (active set).

    Each refit removes at least one rubric from the active set, so the loop ends.
    """
    weights = np.zeros(diffs.shape[1])
    active = np.arange(diffs.shape[1])
    while len(active):
        w = fit_weights(diffs[:, active], labels, C, random_state)
        if (w < 0).any():
            active = active[w >= 0]
            continue
        kept = top_positive(w, top_n)
        if len(kept) < int((w > 0).sum()):
            active = active[kept]
            continue
        weights[active] = w
        break
    return weights


def top_positive(weights: np.ndarray, top_n: int) -> list[int]:
    """Indices of the ``top_n`` largest strictly positive weights, largest first."""
    order = np.argsort(-weights, kind="stable")
    return [int(i) for i in order[:top_n] if weights[i] > 0]


def pairwise_accuracy(diffs: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """Share of pairs where the weighted reward difference has the label's sign (0 = wrong)."""
    if len(labels) == 0:
        return float("nan")
    margin = diffs @ weights
    sign = 2 * np.asarray(labels, dtype=float) - 1
    return float(np.mean(margin * sign > 0))


def pair_log_loss(diffs: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-pair logistic loss ``log(1 + exp(-(2y - 1) w . d))`` of a weight vector."""
    sign = 2 * np.asarray(labels, dtype=float) - 1
    return np.logaddexp(0.0, -sign * (diffs @ weights))


def entering(
    active: np.ndarray, weights: np.ndarray, candidates: np.ndarray, labels: np.ndarray, C: float
) -> np.ndarray:
    """Which ``candidates`` (score differences ``[n, m]`` of rubrics outside the fit) the L1 fit
    would give a positive weight if they joined it: the optimality check of the working-set
    method.

    The fit minimises ``||w||_1 + C * sum loss`` over the mirrored pairs; a rubric at weight 0
    stays at 0 unless moving it up lowers the loss faster than the penalty grows, i.e. unless
    ``-C * dloss/dw_j > 1``. For mirrored pairs ``dloss/dw_j = 2 * sum_i (sigmoid(w . d_i) -
    y_i) d_ij``. Rubrics that pass are worth fitting again; the others would stay at zero.
    """
    if candidates.shape[1] == 0:
        return np.zeros(0, dtype=bool)
    residual = 1.0 / (1.0 + np.exp(-(active @ weights))) - np.asarray(labels, dtype=float)
    gradient = 2.0 * residual @ candidates
    return -C * gradient > 1.0 + 1e-6


def refine(
    train_scores: np.ndarray,
    train_labels: np.ndarray,
    top_n: int = 20,
    C: float | str = "auto",
    C_grid: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0),
    val_scores: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    random_state: int = 0,
    selection: str = "one_se",
    nonnegative: bool = False,
    min_weight_ratio: float = 0.0,
) -> RefinerResult:
    """Fit, keep the Top-N positive rubrics; with ``C="auto"`` pick C on the validation split.

    Each candidate C is judged on the validation split by its pruned (Top-N) weights.
    ``selection="one_se"`` (default) takes the smallest C whose validation log-loss is within one
    standard error of the lowest -- the one-standard-error rule, which trades a statistically
    invisible loss for a sparser set; ``"best"`` takes the lowest validation log-loss;
    ``"accuracy"`` the best validation pairwise accuracy (ties: the lower log-loss). With the
    non-negative refit, one_se kept fewer distractors than ``accuracy`` and, in the realistic
    synthetic world, found more hidden rules (docs/rubric_learning.md). ``min_weight_ratio`` > 0
    (the learner's default 0.25; the paper keeps every positive weight of the Top-N) also drops
    kept rubrics whose weight is below that share of the largest: small weights that chance
    correlations and near-duplicates of a kept rubric pick up.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"refiner.selection must be one of {SELECTIONS}, got {selection!r}")
    if train_scores.shape[1] == 0:
        raise ValueError("the refiner got an empty working set: there are no rubrics to weigh")
    diffs, nan_count = score_differences(train_scores)

    def fit(c: float) -> RefinerResult:
        if nonnegative:
            weights = fit_nonnegative(diffs, train_labels, c, top_n, random_state)
        else:
            weights = fit_weights(diffs, train_labels, c, random_state)
        kept = top_positive(weights, top_n)
        if kept and min_weight_ratio > 0:
            kept = [i for i in kept if weights[i] >= min_weight_ratio * weights[kept[0]]]
        pruned = np.zeros_like(weights)
        pruned[kept] = weights[kept]
        return RefinerResult(pruned, kept, c, nan_count, weights)

    if C != "auto":
        return fit(float(C))
    if val_scores is None or val_labels is None or len(val_labels) == 0:
        raise ValueError("refiner.C=auto needs a non-empty validation split; set refiner.C")
    val_diffs = score_differences(val_scores)[0]
    results = [fit(c) for c in sorted(float(c) for c in C_grid)]
    losses = [pair_log_loss(val_diffs, val_labels, r.weights) for r in results]
    means = np.array([loss.mean() for loss in losses])
    if selection == "accuracy":
        accuracies = [pairwise_accuracy(val_diffs, val_labels, r.weights) for r in results]
        return results[min(range(len(results)), key=lambda i: (-accuracies[i], means[i]))]
    best = int(np.argmin(means))
    if selection == "best":
        return results[best]
    threshold = means[best] + losses[best].std(ddof=1) / np.sqrt(len(losses[best]))
    return results[int(np.flatnonzero(means <= threshold)[0])]
