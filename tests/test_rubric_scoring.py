"""The judge cache: nothing scored twice, interrupted runs resume, corrupt input loses nothing."""

import io

import numpy as np
import pytest
from PIL import Image

from rewards.judges.base import JudgeError, JudgeItem
from rewards.judges.pixel import PixelJudge
from rewards.rubric_set import DEFAULT_TEMPLATE
from rubric_learning.cache import JudgeCache, make_key
from rubric_learning.pairs import CorruptImageError, PreferencePair, content_hash, open_image
from rubric_learning.scoring import CachedGenerator, RubricScorer

RUBRICS = [
    "The image is bright.",
    "The image is predominantly red.",
    "The center of the image is blue.",
]


class CountingJudge(PixelJudge):
    """The pixel judge, counting calls and items; optionally failing after ``fail_after`` calls."""

    def __init__(self, fail_after: int | None = None):
        super().__init__()
        self.calls, self.items, self.fail_after = 0, 0, fail_after

    def yes_prob(self, items):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise JudgeError("judge server went away")
        self.calls += 1
        self.items += len(items)
        return super().yes_prob(items)

    def generate(self, images, text, max_new_tokens=512):
        self.calls += 1
        return f'["{text[:10]} rule with words"]'


def png(seed: int) -> bytes:
    array = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def pairs():
    return [
        PreferencePair(f"p{i}", f"prompt {i}", png(2 * i), png(2 * i + 1), 1.0) for i in range(6)
    ]


def scorer(path, judge, batch_size=8):
    return RubricScorer(judge, JudgeCache(path), "pixel-test", batch_size=batch_size)


def test_scores_match_the_judge_and_a_second_run_asks_nothing(tmp_path, pairs):
    judge = CountingJudge()
    scores = scorer(tmp_path / "c.sqlite", judge).score_pairs(pairs, RUBRICS)
    assert scores.shape == (6, 3, 2) and judge.items == 6 * 2 * 3
    direct = (
        PixelJudge()
        .yes_prob([JudgeItem(open_image(pairs[2].image_b), "", r) for r in RUBRICS])
        .probs.double()
        .numpy()
    )
    np.testing.assert_allclose(scores[2, :, 1], direct, rtol=1e-6)

    again = CountingJudge()
    rerun = scorer(tmp_path / "c.sqlite", again)  # a fresh process: the file is all it has
    np.testing.assert_array_equal(rerun.score_pairs(pairs, RUBRICS), scores)
    assert again.calls == 0 and rerun.stats.score_cache_hits == 36

    rerun.score_pairs(pairs, [*RUBRICS, "The image has high contrast."])
    assert again.items == 12  # only the new rubric, on each of the 12 images
    rerun.score_pairs(
        [PreferencePair("q", "another prompt", pairs[0].image_a, pairs[0].image_b, 1.0)], RUBRICS
    )
    assert again.items == 12 + 6  # the prompt is part of the key


def test_the_judge_gets_the_filled_template_and_the_cache_key_is_stable(tmp_path, pairs):
    """Items carry the template filled with the prompt and rubric; the key is built from exactly
    those strings and the image's content hash, so caches written earlier stay valid."""

    class Recording(PixelJudge):
        def yes_prob(self, items):
            self.seen = list(items)
            return super().yes_prob(items)

    judge = Recording()
    cache = JudgeCache(tmp_path / "c.sqlite")
    RubricScorer(judge, cache, "pixel-test").score_pairs(pairs[:1], RUBRICS[:2])
    context = DEFAULT_TEMPLATE["context"].format(prompt=pairs[0].prompt)
    questions = [DEFAULT_TEMPLATE["question"].format(rubric=r) for r in RUBRICS[:2]]
    assert [(i.context, i.question) for i in judge.seen] == [(context, q) for q in questions] * 2
    for ref in (pairs[0].image_a, pairs[0].image_b):
        for question in questions:
            key = make_key("score", "pixel-test", context, question, content_hash(ref))
            assert cache.get_score(key) is not None


def test_an_interrupted_run_keeps_its_batches_and_resumes(tmp_path, pairs):
    with pytest.raises(JudgeError, match="went away"):
        scorer(tmp_path / "c.sqlite", CountingJudge(fail_after=2), batch_size=5).score_pairs(
            pairs, RUBRICS
        )
    assert len(JudgeCache(tmp_path / "c.sqlite")) == 10
    resumed = CountingJudge()
    scorer(tmp_path / "c.sqlite", resumed, batch_size=5).score_pairs(pairs, RUBRICS)
    assert resumed.items == 36 - 10


def test_a_corrupt_image_fails_clearly_and_loses_nothing(tmp_path, pairs):
    broken = PreferencePair("bad", "prompt 9", png(99), b"\x89PNG\r\n\x1a\ntruncated", 0.0)
    run = scorer(tmp_path / "c.sqlite", CountingJudge(), batch_size=4)
    with pytest.raises(CorruptImageError, match="corrupt image <17 bytes>"):
        run.score_pairs([*pairs, broken], RUBRICS)
    stored = len(JudgeCache(tmp_path / "c.sqlite"))
    assert stored >= 36  # every complete batch before the bad image is on disk
    again = CountingJudge()
    scorer(tmp_path / "c.sqlite", again).score_pairs(pairs, RUBRICS)
    assert again.calls == 0


def test_unknown_statements_are_nan_with_a_counted_reason(tmp_path, pairs):
    run = scorer(tmp_path / "c.sqlite", CountingJudge())
    scores = run.score_pairs(pairs[:2], ["A cat wears a hat."])
    assert np.isnan(scores).all() and run.stats.failures == {"unknown statement": 4}


def test_generated_answers_are_cached(tmp_path):
    judge = CountingJudge()
    image = Image.new("RGB", (8, 8), "red")
    requests = [([image, image], "why one"), ([image, image], "why two")]
    writer = CachedGenerator(judge, JudgeCache(tmp_path / "c.sqlite"), "gen", batch_size=1)
    first = writer.generate_many(requests)
    assert judge.calls == 2 and writer.stats.generate_calls == 2
    again = CountingJudge()
    second = CachedGenerator(again, JudgeCache(tmp_path / "c.sqlite"), "gen").generate_many(
        requests
    )
    assert second == first and again.calls == 0
