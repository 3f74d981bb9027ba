"""UnifiedReward: the answer parser on the formats models write, the end-to-end path on a tiny
random Qwen2.5-VL (garbage answers -> NaN with a counted reason; fixed answers parse), and the
question sent being exactly the stored official (or Flow-GRPO) text."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import rewards.scalar
from rewards.judges.tiny_vlm import build_tiny_vlm
from rewards.scalar.unifiedreward import (
    FLOW_GRPO_UNPARSED,
    UnifiedRewardReward,
    parse_final_score,
    parse_flow_grpo,
)


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("The image matches well.\nFinal Score: 4", 4.0),
        ("Final Score: 3.5", 3.5),
        ("**Final Score:** 5", 5.0),
        ("final score = 2/5", 2.0),
        ("Final Score: [1]", 1.0),
        ("FINAL SCORE - 4.", 4.0),
        ("The final score is 3", 3.0),
        ("Alignment 2, quality 5. Final Score: 2\nOn reflection, Final Score: 3", 3.0),
    ],
)
def test_parser_reads_the_last_final_score(answer, expected):
    assert parse_final_score(answer) == (expected, None)


@pytest.mark.parametrize(
    "answer, reason",
    [
        ("", "unparseable"),
        ("A lovely image, I would give it 4.", "unparseable"),
        ("Final Score: excellent", "unparseable"),
        ("Final Score: 7", "out_of_range"),
        ("Final Score: 0", "out_of_range"),
        ("Final Score: -2", "out_of_range"),
    ],
)
def test_parser_gives_nan_with_a_reason(answer, reason):
    value, why = parse_final_score(answer)
    assert math.isnan(value) and why == reason


# What flow_grpo's _extract_scores (flow_grpo/rewards.py, unifiedreward_score_sglang) returns for
# each answer: re.search of "Final Score:\s*([1-5](?:\.\d+)?)", case-sensitive, 0.0 on no match.
FLOW_GRPO_CASES = [
    ("Final Score: 2\nOn reflection, Final Score: 3", 2.0),  # the first match, not the last
    ("Final Score: 10", 1.0),  # one digit 1-5: "10" reads as 1
    ("Final Score: 5.9", 5.9),  # the decimal part is kept, even past 5
    ("Final Score: 0 ... later Final Score: 4", 4.0),  # 0 cannot match; the search goes on
    ("Final Score:4.25/5", 4.25),
    ("Final Score:\n 3", 3.0),  # \s* crosses the newline
    ("Final Score: 4.", 4.0),  # "4." has no digits after the point: the 4 alone
]
FLOW_GRPO_ZERO = [
    "**Final Score:** 4",  # the markdown bold breaks "Final Score:\s*<digit>"
    "final score: 4",  # case-sensitive
    "Final Score: 7",
    "Final Score: -2",
    "A lovely image, I would give it 4.",
    "",
]


@pytest.mark.parametrize("answer, expected", FLOW_GRPO_CASES)
def test_flow_grpo_parse_takes_the_first_one_digit_score(answer, expected):
    assert parse_flow_grpo(answer) == (expected, None)


@pytest.mark.parametrize("answer", FLOW_GRPO_ZERO)
def test_flow_grpo_parse_scores_what_it_cannot_read_as_zero_and_says_so(answer):
    assert parse_flow_grpo(answer) == (0.0, FLOW_GRPO_UNPARSED)


@pytest.fixture(scope="module")
def tiny_qwen25_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_qwen25_vl")
    build_tiny_vlm("qwen2_5_vl", seed=0, save_dir=folder)
    return folder


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def test_random_model_answers_are_nan_with_counted_reason(tiny_qwen25_dir):
    reward = UnifiedRewardReward(
        path=str(tiny_qwen25_dir), dtype="float32", batch_size=2, max_new_tokens=6
    )
    prompts = ["a red apple", "two dogs", "a blue sky"]
    out = reward(_images(3), prompts)
    answers = reward.answers(_images(3), prompts)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert all(parse_final_score(a)[1] == "unparseable" for a in answers)
    assert torch.isnan(out.scores).all()
    assert out.failures == {"unparseable": 3}
    reward.release()
    assert reward.judge is None


def test_fixed_answers_parse_and_normalise(tiny_qwen25_dir, monkeypatch):
    reward = UnifiedRewardReward(path=str(tiny_qwen25_dir), dtype="float32", normalize="divide_5")
    seen = []

    def fixed(requests, max_new_tokens):
        seen.extend(text for _, text in requests)
        return ["Aligned. Final Score: 4", "Final Score: 2.5", "no verdict"][: len(requests)]

    reward._ensure_loaded()
    monkeypatch.setattr(reward.judge, "generate_many", fixed)
    out = reward(_images(3), ["a red apple", "two dogs", "a blue sky"])
    assert "Text Caption: [two dogs]" in seen[1]
    torch.testing.assert_close(out.details["raw"][:2], torch.tensor([4.0, 2.5]))
    torch.testing.assert_close(out.scores[:2], torch.tensor([0.8, 0.5]))
    assert math.isnan(out.scores[2]) and out.failures == {"unparseable": 1}


def test_flow_grpo_parse_counts_the_zeros_in_the_failures(tiny_qwen25_dir, monkeypatch):
    """parse=flow_grpo: unreadable answers are a real 0 (no NaN), each counted by its reason, so
    the trainer logs them under reward_failures/."""
    reward = UnifiedRewardReward(path=str(tiny_qwen25_dir), dtype="float32", parse="flow_grpo")
    answers = ["Final Score: 2 then Final Score: 5", "**Final Score:** 4", "Final Score: 10"]
    reward._ensure_loaded()
    monkeypatch.setattr(reward.judge, "generate_many", lambda requests, max_new_tokens: answers)
    out = reward(_images(3), ["a", "b", "c"])
    torch.testing.assert_close(out.details["raw"], torch.tensor([2.0, 0.0, 1.0]))
    torch.testing.assert_close(out.scores, torch.tensor([0.4, 0.0, 0.2]))
    assert out.failures == {FLOW_GRPO_UNPARSED: 1} and out.num_failed == 0
    with pytest.raises(ValueError, match="parse must be one of"):
        UnifiedRewardReward(path=str(tiny_qwen25_dir), parse="first")


@pytest.mark.parametrize(
    "options, file, side",
    [
        ({}, "unifiedreward_point_score_question.txt", 32),
        ({"question": "flow_grpo", "image_size": 512}, "unifiedreward_flow_grpo_question.txt", 512),
    ],
)
def test_sends_the_stored_question_verbatim(tiny_qwen25_dir, monkeypatch, options, file, side):
    """The default is UnifiedReward's official question with 512 new tokens; Flow-GRPO's client
    is its question plus a 512 x 512 resize. The text sent is the stored file, prompt filled in."""
    reward = UnifiedRewardReward(path=str(tiny_qwen25_dir), dtype="float32", **options)
    sent = []

    def capture(requests, max_new_tokens):
        sent.extend((images, text, max_new_tokens) for images, text in requests)
        return ["Final Score: 3"] * len(requests)

    reward._ensure_loaded()
    monkeypatch.setattr(reward.judge, "generate_many", capture)
    prompt = "a {braced} caption with a [bracket]"
    reward(_images(1), [prompt])
    ((images, text, max_new_tokens),) = sent
    stored = (Path(rewards.scalar.__file__).parent / "texts" / file).read_text(encoding="utf-8")
    assert text == stored.replace("{prompt}", prompt)
    assert text.endswith(f"Text Caption: [{prompt}]") and "Final Score:" in text
    assert max_new_tokens == 512
    assert images[0].size == (side, side)


def test_question_options_and_paths_are_checked(tmp_path, tiny_qwen25_dir):
    with pytest.raises(FileNotFoundError, match="unifiedreward model.*nowhere"):
        UnifiedRewardReward(path=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="official.*{prompt}"):
        UnifiedRewardReward(path=str(tiny_qwen25_dir), question="Rate it.")
    own = UnifiedRewardReward(path=str(tiny_qwen25_dir), question="Judge [{prompt}]. Final Score:")
    assert own.question_template == "Judge [{prompt}]. Final Score:"
    question = tmp_path / "question.txt"
    question.write_text("Caption: {prompt}. Answer with Final Score: X")
    reward = UnifiedRewardReward(path=str(tiny_qwen25_dir), question_file=str(question))
    assert reward.question_template.startswith("Caption: {prompt}")
