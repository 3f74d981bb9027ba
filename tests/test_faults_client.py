"""Fault suite, client side: the OpenAI-compatible judge client and rubric learning's cache
against a real server on 127.0.0.1 (tests/fault_server.py) and a real SQLite file.

Each malformed answer is NaN with a counted reason, never a crash nor an accepted P(yes) outside
[0, 1]; busy servers are retried as they ask; a failure that says nothing about the item (a
timeout, a 503) is never cached as its answer. Rows of docs/reliability.md.
"""

import math
import time

import numpy as np
import pytest
import torch
from fault_server import FaultServer
from PIL import Image

from rewards.judges.base import JudgeItem, is_transient
from rewards.judges.openai_server import (
    MALFORMED,
    NO_YES_NO_TOKEN,
    OUT_OF_RANGE,
    OpenAIJudge,
)
from rubric_learning.cache import JudgeCache
from rubric_learning.pairs import PreferencePair
from rubric_learning.scoring import RubricScorer

FAST = dict(backoff_s=0.01, max_backoff_s=0.05, health_timeout_s=2.0, timeout_s=5.0)


def items(n: int = 2) -> list[JudgeItem]:
    images = [Image.new("RGB", (8, 8), (40 * i, 10, 200)) for i in range(n)]
    return [JudgeItem(image, "a prompt", "Is it blue?") for image in images]


def answer(top_logprobs) -> dict:
    """A chat completion whose first token carries ``top_logprobs``."""
    content = [{"token": "yes", "logprob": -0.1, "top_logprobs": top_logprobs}]
    return {"choices": [{"message": {"content": "yes"}, "logprobs": {"content": content}}]}


MALFORMED_ANSWERS = {
    "logprobs is a list": ({"choices": [{"logprobs": [1, 2]}]}, MALFORMED),
    "choices is a string": ({"choices": "yes"}, MALFORMED),
    "body is a list": ([1, 2, 3], MALFORMED),
    "a top entry is a string": (answer(["yes"]), MALFORMED),
    "top_logprobs is a number": (answer(7), MALFORMED),
    "logprob is a string": (answer([{"token": "yes", "logprob": "-0.1"}]), MALFORMED),
    "huge logprob (exp overflows)": (answer([{"token": "yes", "logprob": 1e308}]), OUT_OF_RANGE),
    "positive logprob: P(yes) = 7.39": (answer([{"token": "yes", "logprob": 2.0}]), OUT_OF_RANGE),
    "NaN logprob": (answer([{"token": "yes", "logprob": math.nan}]), OUT_OF_RANGE),
    "yes spellings sum above 1": (
        answer([{"token": "yes", "logprob": -0.1}, {"token": " Yes", "logprob": -0.2}]),
        OUT_OF_RANGE,
    ),
}


@pytest.mark.parametrize("scoring", ["raw", "normalized"])
def test_malformed_answers_are_nan_with_their_reason_never_a_crash(scoring):
    """Before: a list as logprobs raised AttributeError, a huge logprob OverflowError, and
    scoring=raw accepted P(yes) = 7.39 (a NaN logprob was NaN without a reason)."""
    with FaultServer("body") as server:
        judge = OpenAIJudge(server.url, scoring=scoring, max_retries=2, **FAST)
        for case, (body, reason) in MALFORMED_ANSWERS.items():
            server.body = body
            before = server.chat_requests
            result = judge.yes_prob(items(2))
            assert torch.isnan(result.probs).all(), case
            assert result.reasons == [reason, reason], case
            assert server.chat_requests - before == 2, f"{case}: a bad answer is not retried"
        judge.close()


def test_valid_edge_answers_stay_numbers():
    """-inf is a valid logprob (probability 0); rounding just above 0 is tolerated."""
    cases = [
        (answer([{"token": "yes", "logprob": -math.inf}, {"token": "no", "logprob": -0.1}]), 0.0),
        (answer([{"token": "yes", "logprob": 5e-5}]), 1.0),
        (answer([{"token": "no", "logprob": -0.5}]), 0.0),
        (answer([{"token": "maybe", "logprob": -0.1}]), None),
    ]
    with FaultServer("body") as server:
        judge = OpenAIJudge(server.url, scoring="raw", **FAST)
        for body, want in cases:
            server.body = body
            result = judge.yes_prob(items(1))
            if want is None:
                assert result.reasons == [NO_YES_NO_TOKEN]
            else:
                assert result.probs.tolist() == [want] and result.reasons == [None]
        judge.close()


def test_429_with_retry_after_is_retried_and_400_is_not():
    with FaultServer("status", status=429, fail_first=2, retry_after="0") as server:
        judge = OpenAIJudge(server.url, concurrency=1, max_retries=3, **FAST)
        result = judge.yes_prob(items(1))
        assert result.reasons == [None] and server.chat_requests == 3
        server.status, server.fail_first = 400, server.chat_requests + 5
        result = judge.yes_prob(items(1))
        assert result.reasons == ["HTTP 400"] and server.chat_requests == 4
        judge.close()


def test_retry_after_is_honoured_up_to_max_backoff():
    with FaultServer("status", status=503, fail_first=1, retry_after="30") as server:
        judge = OpenAIJudge(
            server.url, concurrency=1, max_retries=1, **{**FAST, "max_backoff_s": 0.2}
        )
        start = time.monotonic()
        assert judge.yes_prob(items(1)).reasons == [None]
        assert time.monotonic() - start < 10  # capped at max_backoff_s, not the server's 30 s
        judge.close()


def test_transient_reasons_are_told_apart_from_answers():
    for reason in ("timeout", "connection error", "request error", "HTTP 503", "HTTP 429"):
        assert is_transient(reason), reason
    for reason in (None, "no yes/no token", MALFORMED, OUT_OF_RANGE, "HTTP 400", "HTTP 5"):
        assert not is_transient(reason), reason


def make_pairs(tmp_path, n: int = 2) -> list[PreferencePair]:
    pairs = []
    for i in range(n):
        a, b = tmp_path / f"a{i}.png", tmp_path / f"b{i}.png"
        Image.new("RGB", (8, 8), (200, 20 * i, 0)).save(a)
        Image.new("RGB", (8, 8), (0, 20 * i, 200)).save(b)
        pairs.append(PreferencePair(str(i), f"prompt {i}", str(a), str(b), 1.0))
    return pairs


def test_rubric_learning_never_caches_a_timeout_or_a_503(tmp_path):
    """Before: a timed-out answer was stored as NaN and read back as final by every later run."""
    pairs, rubrics = make_pairs(tmp_path), ["The image is red.", "The image is blue."]
    path = tmp_path / "judge_cache.sqlite"
    with FaultServer("hang") as server:
        judge = OpenAIJudge(server.url, max_retries=0, **{**FAST, "timeout_s": 0.3})
        cache = JudgeCache(path)
        scores = RubricScorer(judge, cache, "j").score_pairs(pairs, rubrics)
        assert np.isnan(scores).all() and len(cache) == 0
        cache.close()
    with FaultServer("status", status=503) as server:
        judge = OpenAIJudge(server.url, max_retries=0, **FAST)
        cache = JudgeCache(path)
        scorer = RubricScorer(judge, cache, "j")
        assert np.isnan(scorer.score_pairs(pairs, rubrics)).all() and len(cache) == 0
        assert scorer.stats.failures == {"HTTP 503": 8}
        server.mode = "ok"  # the server recovers: the same run asks again and stores answers
        again = scorer.score_pairs(pairs, rubrics)
        assert not np.isnan(again).any() and len(cache) == 8
        cache.close()
    reopened = JudgeCache(path)  # a later run reads the answers, not the failures
    scorer = RubricScorer(judge, reopened, "j")
    assert (scorer.score_pairs(pairs, rubrics) == again).all()
    assert scorer.stats.score_cache_hits == 8
    reopened.close()


def test_a_transient_nan_stored_by_an_older_version_reads_as_missing(tmp_path):
    cache = JudgeCache(tmp_path / "c.sqlite")
    # written directly, as the previous version did
    cache._db.execute("INSERT INTO scores VALUES ('k1', NULL, 'timeout')")
    cache._db.execute("INSERT INTO scores VALUES ('k2', NULL, 'no yes/no token')")
    cache._db.commit()
    cache.close()
    cache = JudgeCache(tmp_path / "c.sqlite")
    assert cache.get_score("k1") is None  # asked again
    hit = cache.get_score("k2")  # an answer about the item: kept
    assert math.isnan(hit[0]) and hit[1] == "no yes/no token"
    cache.close()
