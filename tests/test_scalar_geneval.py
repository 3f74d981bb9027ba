"""GenEval's rules on hand-written detector outputs (tests/parity/geneval_cases.py), each expected
value worked out by hand from the sources' steps (djghosh13/geneval ``evaluate_images.py``
``evaluate``; yifan123/reward-server ``gen_eval.py`` ``evaluate_reward``): thresholds (0.3, 0.9 for
counting), at most 16 objects per class, >= counts for the benchmark and exact counts with the
partial score for the reward, colours on the most confident objects, positions from box centres
with the 0.1 margin. The same cases run against the official source files in
tests/parity/test_parity_geneval.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rewards.scalar.geneval import (
    GenevalOptions,
    GenevalReward,
    benchmark_rule,
    check_metadata,
    relative_position,
    reward_rule,
    select_objects,
)
from tests.parity.geneval_cases import CASES, SIZE, colour_fn, detector_output

# name -> (benchmark correct, reward strict, reward partial score)
EXPECTED = {
    "single found": (True, True, 1.0),
    "single under threshold": (False, False, 0.0),  # 0.3 is not above 0.3
    "single twice: partial": (True, False, -1.0),  # 3 cows for 1: 1 - |1 - 3| / 1
    "two objects one missing": (False, False, 0.5),
    "counting exact": (True, True, 1.0),  # 0.85 is under the counting threshold 0.9
    "counting too many": (False, False, 0.5),  # the exclude clause; 1 - 1/2
    "counting four of one": (False, False, 0.25),
    "colour right": (True, True, 1.0),
    "colour wrong": (False, False, 0.5),
    "colour on extra object": (True, False, 0.0),  # count 0 and the colour's 0
    "colour attr half": (False, False, 0.75),
    "position right": (True, True, 1.0),
    "position wrong": (False, False, 0.75),  # the failed position adds 0 and 1
    "position too close": (False, False, 0.75),
    "position no target": (False, False, 1 / 3),
    "position diagonal": (True, True, 1.0),
    "confidence ties and cap": (True, False, -14.0),  # capped at 16 persons: 1 - 15
}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_rules_on_hand_written_detections(case):
    name, row, found, colours = case
    options = GenevalOptions()
    image = Image.new("RGB", SIZE)
    objects = select_objects(detector_output(found), None, row["tag"], options)
    correct, _ = benchmark_rule(image, objects, row, colour_fn(colours), options)
    strict, score, _ = reward_rule(image, objects, row, colour_fn(colours), options)
    assert (correct, strict) == EXPECTED[name][:2]
    assert score == pytest.approx(EXPECTED[name][2], abs=1e-12)


def test_relative_position_by_hand():
    teddy, dog = (np.array([5, 20, 30, 60, 1.0]), None), (np.array([60, 25, 90, 55, 1.0]), None)
    assert relative_position(dog, teddy, 0.1) == {"right of"}
    assert relative_position(teddy, dog, 0.1) == {"left of"}
    kite, glass = (np.array([5, 5, 30, 30, 1.0]), None), (np.array([50, 40, 70, 75, 1.0]), None)
    assert relative_position(glass, kite, 0.1) == {"right of", "below"}
    assert relative_position(kite, kite, 0.1) == set()


def test_reward_runs_detector_and_reports_strict_and_benchmark():
    picked = [CASES[0], CASES[8], CASES[5]]  # single found, colour wrong, counting too many
    rows = [case[1] for case in picked]
    calls = iter(picked)
    current = {}

    def detector(image):
        current["case"] = next(calls)
        return detector_output(current["case"][2]), None

    def colours(image, objects, name):
        return colour_fn(current["case"][3])(image, objects, name)

    reward = GenevalReward(detector, colours, only_strict=False)
    out = reward([Image.new("RGB", SIZE)] * 3, [r["prompt"] for r in rows], rows)
    assert out.scores.tolist() == [1.0, 0.5, 0.5]
    assert out.details["strict"].tolist() == [1.0, 0.0, 0.0]
    assert out.details["correct"].tolist() == [1.0, 0.0, 0.0]
    assert torch.equal(out.scores, out.scores.float())


def test_metadata_without_tag_fails_with_one_line():
    reward = GenevalReward(lambda image: ([], None), lambda *a: [])
    with pytest.raises(ValueError, match=r"row 2 \('a cat'\) has tag None"):
        reward.check_prompts(["a bench", "a cat"], [CASES[0][1], {"include": []}])
    with pytest.raises(ValueError, match="no 'include' list"):
        check_metadata({"tag": "counting"})
    with pytest.raises(ValueError, match="without class/count"):
        check_metadata({"tag": "counting", "include": [{"class": "cat"}]})
