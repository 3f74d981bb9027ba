"""OpenAIJudge against rewards.judges.serve on 127.0.0.1 (free port, server in a thread).

The server is backed by the PixelJudge (exact answers to compare with) and by the tiny random
TransformersJudge; faults are injected through the server's options. Time bounds are generous
sanity bounds on "ends instead of hanging", not speed claims.
"""

import math
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewards.judges.base import JudgeError, JudgeItem
from rewards.judges.openai_server import (
    MALFORMED,
    NO_YES_NO_TOKEN,
    TIMEOUT,
    OpenAIJudge,
    decode_data_url,
    image_data_url,
    yes_no_mass,
)
from rewards.judges.pixel import PixelJudge
from rewards.judges.serve import Faults, JudgeServer, load_judge
from rewards.rubric import RubricReward

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["The image is bright.", "The top half of the image is red.", "There is a cat."]
FAST = dict(backoff_s=0.01, max_backoff_s=0.05, health_timeout_s=2.0, timeout_s=5.0)


def _items(n_images: int = 3, questions=QUESTIONS) -> list[JudgeItem]:
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(n_images)
    ]
    return [JudgeItem(im, f"prompt {i}", q) for i, im in enumerate(images) for q in questions]


def _judge(server: JudgeServer, **kwargs) -> OpenAIJudge:
    return OpenAIJudge(server.url, **{**FAST, **kwargs})


def test_data_urls_round_trip_and_yes_no_spellings_are_summed():
    image = _items(1)[0].image
    assert np.array_equal(np.asarray(decode_data_url(image_data_url(image))), np.asarray(image))
    top = [
        {"token": " yes", "logprob": math.log(0.3)},
        {"token": "Yes", "logprob": math.log(0.2)},
        {"token": "NO", "logprob": math.log(0.1)},
        {"token": " no", "logprob": math.log(0.15)},
        {"token": "maybe", "logprob": math.log(0.25)},
        {"token": "yesterday", "logprob": math.log(0.01)},
    ]
    p_yes, p_no = yes_no_mass(top)
    assert p_yes == pytest.approx(0.5) and p_no == pytest.approx(0.25)


def test_answers_match_the_backing_pixel_judge_in_both_scoring_modes():
    items = _items()
    want = PixelJudge().yes_prob(items)
    with JudgeServer(PixelJudge(), model_name="pixel-judge", other_mass=0.2) as server:
        judge = _judge(server, concurrency=4)
        assert judge.model == "pixel-judge"  # taken from /v1/models
        got = judge.yes_prob(items)
        judge.scoring = "raw"
        raw = judge.yes_prob(items)
        assert server.chat_requests == 2 * len(items)
    torch.testing.assert_close(got.probs, want.probs, atol=1e-6, rtol=0, equal_nan=True)
    torch.testing.assert_close(raw.probs, 0.8 * want.probs, atol=1e-6, rtol=0, equal_nan=True)
    assert got.failures == {NO_YES_NO_TOKEN: 3}  # the statement the pixel grammar lacks


def test_rubric_reward_through_the_server_equals_the_local_judge():
    images = [item.image for item in _items(2, ["x"])]
    demo = ROOT / "conf/rubrics/demo_pixel.json"
    local = RubricReward(demo, PixelJudge())(images, ["a", "b"])
    with JudgeServer(PixelJudge()) as server:
        remote = RubricReward(demo, _judge(server))(images, ["a", "b"])
    torch.testing.assert_close(remote.scores, local.scores, atol=1e-5, rtol=0)


def test_5xx_answers_are_retried_until_they_succeed():
    items = _items(2)
    with JudgeServer(PixelJudge(), faults=Faults(fail_first=2, fail_status=503)) as server:
        result = _judge(server, concurrency=1, max_retries=3).yes_prob(items)
        assert server.chat_requests == len(items) + 2
    assert result.failures == {NO_YES_NO_TOKEN: 2}


def test_5xx_after_retries_is_nan_with_reason_or_a_clear_error():
    items = _items(1)
    with JudgeServer(PixelJudge(), faults=Faults(fail_first=10**6, fail_status=502)) as server:
        start = time.monotonic()
        result = _judge(server, concurrency=1, max_retries=2).yes_prob(items)
        assert time.monotonic() - start < 30
        assert server.chat_requests == 3 * len(items)
        assert torch.isnan(result.probs).all() and result.failures == {"HTTP 502": len(items)}
        with pytest.raises(JudgeError, match="HTTP 502"):
            _judge(server, max_retries=0, on_error="raise").yes_prob(items)


def test_timeouts_end_in_bounded_time_and_a_retry_can_recover():
    items = _items(1, QUESTIONS[:2])
    faults = Faults(slow_first=2, slow_s=1.5)
    with JudgeServer(PixelJudge(), faults=faults) as server:
        start = time.monotonic()
        result = _judge(server, concurrency=2, timeout_s=0.3, max_retries=0).yes_prob(items)
        assert time.monotonic() - start < 20
        assert result.failures == {TIMEOUT: 2}
        faults.slow_first = server.chat_requests + 1  # only the next request is slow
        recovered = _judge(server, concurrency=1, timeout_s=0.3, max_retries=1).yes_prob(items)
    assert recovered.failures == {}
    torch.testing.assert_close(
        recovered.probs, PixelJudge().yes_prob(items).probs, atol=1e-6, rtol=0
    )


def test_malformed_bodies_are_nan_without_retry():
    items = _items(1, QUESTIONS[:2])
    with JudgeServer(PixelJudge(), faults=Faults(malformed_first=1)) as server:
        result = _judge(server, concurrency=1, max_retries=3).yes_prob(items)
        assert server.chat_requests == len(items)
    assert result.failures == {MALFORMED: 1} and torch.isnan(result.probs[0])
    assert not torch.isnan(result.probs[1])


def test_missing_logprobs_is_a_clear_error():
    with JudgeServer(PixelJudge(), faults=Faults(drop_logprobs=True)) as server:
        with pytest.raises(JudgeError, match="without logprobs"):
            _judge(server).yes_prob(_items(1))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_down_or_unhealthy_server_fails_clearly_in_bounded_time():
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    start = time.monotonic()
    with pytest.raises(JudgeError, match="not healthy"):
        OpenAIJudge(url, health_timeout_s=0.5)
    judge = OpenAIJudge(url, model="m", health_check=False, max_retries=1, backoff_s=0.01)
    with pytest.raises(JudgeError, match="is down"):
        judge.yes_prob(_items(1))
    assert time.monotonic() - start < 30
    with JudgeServer(PixelJudge(), faults=Faults(unhealthy=True)) as server:
        with pytest.raises(JudgeError, match="HTTP 503"):
            OpenAIJudge(server.url, health_timeout_s=0.3)


def test_free_text_from_a_judge_that_cannot_generate_is_a_clear_error():
    with JudgeServer(PixelJudge()) as server:
        with pytest.raises(JudgeError, match="HTTP 501"):
            _judge(server, max_retries=0).generate([_items(1)[0].image], "Describe it.")


def test_load_judge_names_the_missing_config():
    assert isinstance(load_judge("pixel", ["scoring=raw"]), PixelJudge)
    with pytest.raises(FileNotFoundError, match="no_such_judge.yaml"):
        load_judge("no_such_judge", [])


def test_tiny_transformers_judge_behind_the_server():
    local = load_judge("tiny_qwen3_vl", ["shared_prefix=none"])
    items = _items(2, QUESTIONS[:2])
    want = local.yes_prob(items)
    with JudgeServer(local) as server:
        judge = _judge(server, concurrency=4, timeout_s=60.0)
        got = judge.yes_prob(items)
        texts = judge.generate_many([([items[0].image], "Describe the image.")] * 2, 3)
    torch.testing.assert_close(got.probs, want.probs, atol=1e-5, rtol=0)
    assert got.failures == {} and len(texts) == 2 and all(isinstance(t, str) for t in texts)


def _recording(server: JudgeServer) -> tuple[list, dict]:
    """Record each chat request's (image uuid, question) in arrival order and the most requests
    the server held at once."""
    seen, state = [], {"now": 0, "most": 0}
    lock = threading.Lock()
    original = server.chat_completion

    def chat_completion(body, **kwargs):
        part = body["messages"][-1]["content"][0]
        with lock:
            seen.append((part.get("uuid"), body["messages"][-1]["content"][-1]["text"]))
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            return original(body, **kwargs)
        finally:
            with lock:
                state["now"] -= 1

    server.chat_completion = chat_completion
    return seen, state


def test_each_image_is_encoded_once_and_sent_image_major_with_its_id(monkeypatch):
    from rewards.judges import openai_server

    encoded = []
    original = openai_server.image_data_url
    monkeypatch.setattr(
        openai_server,
        "image_data_url",
        lambda im, fmt="PNG": encoded.append(im) or original(im, fmt),
    )
    items = _items(3)
    question_major = [items[k * 3 + q] for q in range(3) for k in range(3)]
    with JudgeServer(PixelJudge()) as server:
        seen, _ = _recording(server)
        judge = _judge(server, concurrency=1)
        assert judge.image_ids  # the server lists itself as owned by this project
        got = judge.yes_prob(question_major)
        assert server.images_decoded == 3  # one decode per image, not per question
    assert len(encoded) == 3
    uuids = [uuid for uuid, _ in seen]
    assert all(uuids) and len(set(uuids)) == 3
    assert uuids == sorted(uuids, key=uuids.index)  # all questions of an image together
    torch.testing.assert_close(
        got.probs, PixelJudge().yes_prob(question_major).probs, atol=1e-6, rtol=0, equal_nan=True
    )
    with JudgeServer(PixelJudge()) as server:
        seen, _ = _recording(server)
        _judge(server, image_ids=False).yes_prob(items[:2])
    assert [uuid for uuid, _ in seen] == [None, None]


@pytest.mark.parametrize(("concurrency", "expected"), [(None, 12), (4, 4)])
def test_a_call_keeps_its_questions_in_flight_up_to_the_bound(concurrency, expected):
    items = _items(3, [*QUESTIONS, "The image is dark."])  # 12 questions
    kwargs = {} if concurrency is None else {"concurrency": concurrency}
    faults = Faults(slow_first=len(items), slow_s=1.0)
    with JudgeServer(PixelJudge(), faults=faults, batch_wait_s=0.2) as server:
        _, state = _recording(server)
        _judge(server, **kwargs).yes_prob(items)
        batches = server.worker.batch_sizes
    assert state["most"] == expected
    if concurrency is None:
        assert max(batches) > 1  # the server batches the questions that arrive together
