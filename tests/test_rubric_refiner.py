"""Refiner against a direct scikit-learn fit, the active-set variant, C choice, mining, seeds."""

import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression

from rewards.pixel_target import PixelTargetReward
from rubric_learning.mining import HardPairMiner, bucket_pairs, bucket_shares
from rubric_learning.pairs import PreferencePair
from rubric_learning.refiner import entering, pairwise_accuracy, refine, score_differences
from rubric_learning.seeds import composite_scores, proxy_margins, select_seed_pairs


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def make_scores(n=300, k=8, seed=0):
    """Scores [n, k, 2] whose first two rubrics decide the (noisy) label."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0, 1, (n, k, 2))
    d = scores[:, :, 0] - scores[:, :, 1]
    logits = 4 * d[:, 0] + 2 * d[:, 1]
    labels = (rng.uniform(0, 1, n) < 1 / (1 + np.exp(-logits))).astype(float)
    return scores, labels


def test_paper_refiner_equals_a_direct_sklearn_fit_on_symmetrised_pairs():
    scores, labels = make_scores()
    result = refine(scores, labels, top_n=3, C=0.5, random_state=0)  # the default: one fit
    d = scores[:, :, 0] - scores[:, :, 1]
    X, y = np.vstack([d, -d]), np.concatenate([labels, 1 - labels])
    reference = (
        LogisticRegression(
            C=0.5, l1_ratio=1.0, solver="liblinear", fit_intercept=False, random_state=0
        )
        .fit(X, y.astype(int))
        .coef_[0]
    )
    order = [i for i in np.argsort(-reference)[:3] if reference[i] > 0]
    assert result.kept == order
    np.testing.assert_allclose(result.fitted, reference, rtol=1e-10)  # before Top-N: all of it
    np.testing.assert_allclose(result.weights[order], reference[order], rtol=1e-10)
    assert np.count_nonzero(result.weights) == len(order)
    assert result.kept[:2] == [0, 1]
    # Symmetrised: the mirrored data set gives the same weights.
    mirrored = refine(scores[:, :, ::-1], 1 - labels, top_n=3, C=0.5, nonnegative=False)
    np.testing.assert_allclose(mirrored.weights, result.weights, atol=1e-8)


def test_nonnegative_refit_recovers_a_rule_whose_complement_took_its_weight():
    scores, labels = make_scores(k=4, seed=1)
    complement = 1 - scores[:, 1:2, :]  # "not rubric 1": exactly opposite differences
    scores = np.concatenate([complement, scores], axis=1)  # complement first, as liblinear sees it
    paper = refine(scores, labels, top_n=5, C=1.0, nonnegative=False)
    ours = refine(scores, labels, top_n=5, C=1.0, nonnegative=True)
    assert (ours.weights >= 0).all()
    assert {1, 2} <= set(ours.kept)  # rubric 0 (original index) and rubric 1, not its complement
    assert ours.weights[0] == 0
    d = score_differences(scores)[0]
    assert pairwise_accuracy(d, labels, ours.weights) >= pairwise_accuracy(d, labels, paper.weights)


def test_auto_c_uses_validation_and_one_se_prefers_sparser_sets():
    scores, labels = make_scores(n=400, k=12, seed=2)
    train, val = (scores[:250], labels[:250]), (scores[250:], labels[250:])
    grid = [0.003, 0.03, 0.3, 3.0]
    best = refine(
        *train, C="auto", C_grid=grid, val_scores=val[0], val_labels=val[1], selection="best"
    )
    one_se = refine(
        *train, C="auto", C_grid=grid, val_scores=val[0], val_labels=val[1], selection="one_se"
    )
    assert best.C in grid and one_se.C <= best.C
    assert len(one_se.kept) <= len(best.kept)
    # selection=accuracy: the C whose kept set ranks the most validation pairs right.
    chosen = refine(
        *train, C="auto", C_grid=grid, val_scores=val[0], val_labels=val[1], selection="accuracy"
    )
    val_diffs = score_differences(val[0])[0]
    accuracies = [
        pairwise_accuracy(val_diffs, val[1], refine(*train, C=c, nonnegative=False).weights)
        for c in grid
    ]
    assert pairwise_accuracy(val_diffs, val[1], chosen.weights) == max(accuracies)
    with pytest.raises(ValueError, match="refiner.selection must be one of"):
        refine(*train, C="auto", val_scores=val[0], val_labels=val[1], selection="smallest")
    with pytest.raises(ValueError, match="needs a non-empty validation split"):
        refine(*train, C="auto")
    with pytest.raises(ValueError, match="empty working set"):
        refine(scores[:, :0], labels, C=1.0)
    with pytest.raises(ValueError, match="labels 0 or 1"):
        refine(scores, np.full(len(labels), 0.5), C=1.0)


def test_nan_features_count_as_no_evidence():
    scores, labels = make_scores(n=50, k=3)
    scores[0, 1, 0] = np.nan
    diffs, count = score_differences(scores)
    assert count == 1 and diffs[0, 1] == 0
    assert refine(scores, labels, C=1.0).nan_features == 1


def test_buckets_follow_margins_and_rewards():
    rewards = np.array([[0.9, 0.1], [0.5, 0.55], [0.1, 0.9], [0.95, 0.97], [0.2, 0.3]])
    labels = np.array([1, 1, 1, 1, 0])  # pair 4 (B preferred, B higher) is right
    buckets = bucket_pairs(rewards, labels, small_margin_percentile=50, high_reward_percentile=75)
    assert list(buckets["high_reward"]) == [3]
    assert list(buckets["small_margin"]) == [1] and list(buckets["large_margin"]) == [2]


def test_schedule_shifts_from_large_margin_to_high_reward_and_uses_are_capped():
    start = {"small_margin": 0.2, "large_margin": 0.7, "high_reward": 0.1}
    end = {"small_margin": 0.2, "large_margin": 0.1, "high_reward": 0.7}
    first, last = bucket_shares(0, 3, start, end), bucket_shares(2, 3, start, end)
    assert (
        first["large_margin"] > first["high_reward"] and last["high_reward"] > last["large_margin"]
    )
    rng = np.random.default_rng(0)
    rewards, labels = rng.uniform(0, 1, (60, 2)), np.ones(60)
    ids = [f"p{i}" for i in range(60)]
    miner = HardPairMiner(per_round=10, max_uses=4, schedule_start=start, schedule_end=end)
    drawn = Counter()
    for r in range(30):
        chosen, counts = miner.mine(rewards, labels, ids, r % 3, 3)
        drawn.update(ids[i] for i in chosen)
        assert sum(c["drawn"] for c in counts.values()) == len(chosen)
    wrong = int((rewards[:, 0] <= rewards[:, 1]).sum())
    assert max(drawn.values()) == 4 and sum(drawn.values()) == 4 * wrong  # then exhausted


def test_seed_composite_rewards_margin_and_cluster_diversity():
    margins = np.array([3.0, 2.0, 1.0, 0.5])
    clusters = np.array([0, 0, 0, 1])
    by_margin = composite_scores(margins, clusters, margin_weight=1.0)
    by_diversity = composite_scores(margins, clusters, margin_weight=0.0)
    assert np.argmax(by_margin) == 0
    assert by_diversity[3] == by_diversity[0] == 1.0 and by_diversity[1] == 0.5


def test_proxy_margins_point_toward_the_preferred_image_and_seeds_span_clusters():
    red, blue = png((230, 50, 50)), png((40, 40, 200))
    prompts = ["a red fox", "a red fox running", "a blue whale", "a blue whale diving"]
    pairs = [
        PreferencePair(f"p{i}", prompt, red, blue, float(i % 2 == 0))
        for i, prompt in enumerate(prompts)
    ]
    reward = PixelTargetReward(target_rgb=[0.9, 0.2, 0.2])
    margins = proxy_margins(reward, pairs)
    assert margins[0] > 0 and margins[1] == pytest.approx(-margins[0])
    assert (proxy_margins(None, pairs) == 0).all()
    chosen = select_seed_pairs(pairs, num=2, reward=reward, n_clusters=2, margin_weight=0.5)
    assert {p.prompt.split()[1] for p in chosen} == {"red", "blue"}  # one per prompt cluster
    assert all(p.label == 1.0 for p in chosen)  # the proxy agrees with people on both


def test_prompts_tfidf_cannot_tell_apart_share_a_cluster_without_warnings():
    import warnings

    from rubric_learning.seeds import cluster_prompts

    prompts = [f"tile {i}" for i in range(10)] + ["a red fox"] * 3 + ["a blue kite"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # k-means would warn about duplicate points
        clusters = cluster_prompts(prompts, n_clusters=8, seed=0)
        assert list(cluster_prompts(["1", "2"], n_clusters=8, seed=0)) == [0, 0]  # no words
    assert len(set(clusters[:10])) == 1 and len(set(clusters)) == 3


def test_min_weight_ratio_drops_kept_rubrics_far_below_the_largest():
    scores, labels = make_scores(n=400, k=6, seed=3)
    plain = refine(scores, labels, top_n=6, C=1.0)
    small = [i for i in plain.kept if plain.weights[i] < 0.3 * plain.weights[plain.kept[0]]]
    assert small  # chance correlations get small positive weights in a plain fit
    trimmed = refine(scores, labels, top_n=6, C=1.0, min_weight_ratio=0.3)
    assert trimmed.kept == [i for i in plain.kept if i not in small]
    np.testing.assert_allclose(trimmed.fitted, plain.fitted)  # the same fit, fewer kept


def test_entering_names_the_pruned_rubrics_a_refit_would_weigh():
    """The working-set optimality check against real refits: a rubric outside the fit that the
    check names gets a positive weight when it joins; one it does not name stays at zero."""
    scores, labels = make_scores(n=400, k=6, seed=4)
    d = score_differences(scores)[0]
    C = 0.05
    outside = [0, 3, 4]  # rubric 0 decides the label, 3 and 4 are noise
    inside = [i for i in range(6) if i not in outside]
    weights = refine(scores[:, inside], labels, top_n=6, C=C, nonnegative=False).fitted
    flags = entering(d[:, inside], weights, d[:, outside], labels, C)
    assert list(flags) == [True, False, False]
    for j, flag in zip(outside, flags):
        refit = refine(scores[:, inside + [j]], labels, top_n=6, C=C, nonnegative=False)
        assert (refit.fitted[-1] > 0) == flag
