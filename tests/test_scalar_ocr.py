"""The OCR reward's rule against yifan123/flow_grpo ``flow_grpo/ocr.py`` (``OcrScorer.__call__``,
commit ac4c86e8), on recogniser outputs written by hand: each expected value is worked out from
the reference's steps (``split('"')[1]``; lines with confidence > 0 joined; spaces removed,
lower-cased; containment -> 1; Levenshtein capped at the target length; a failure -> distance =
length). The PaddleOCR call path itself runs against the real package in ``make parity``."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from PIL import Image

from rewards import build_reward
from rewards.scalar.ocr import OcrReward, PaddleOcrRecognizer, levenshtein, ocr_reward, quoted_text

CASES = [
    # (prompt, recogniser lines, expected reward, why)
    ('A sign that says "Hello World"', [("HELLO", 0.9), ("world!", 0.8)], 1.0, "contained"),
    ('A sign that says "Hello World"', [("Hel", 0.9), ("xx", 0.0), ("lo World", 0.7)], 1.0,
     "multi-line; the confidence-0 line is dropped"),
    ('"flow grpo" on a mug', [("fl0w grp", 0.95)], 1 - 2 / 8, "o->0 and a missing o: 2 of 8"),
    ('"flow grpo" on a mug', [], 0.0, "nothing read: distance = length"),
    ('a "ab" sticker', [("xyzxyzxyz", 0.9)], 0.0, "distance 9 capped at 2"),
    ('a "ab" sticker', [("ab", -1.0)], 0.0, "negative confidence dropped"),
    ('the word "cat', [("cot", 0.5)], 1 - 1 / 3, "one quote: the rest of the prompt"),
    ('"Tab\tStop" here', [("tab\tstop", 0.5)], 1.0, "only spaces are removed, tabs kept"),
    ('"A B" x', [("ba", 0.9)], 0.0, "ab vs ba: distance 2 of 2"),
]  # fmt: skip


class FakeRecognizer:
    """Returns prepared lines per call, or raises where the entry is an exception."""

    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.seen = []

    def __call__(self, image):
        self.seen.append(image)
        out = self.outputs.pop(0)
        if isinstance(out, Exception):
            raise out
        return out


@pytest.mark.parametrize(("prompt", "lines", "expected", "why"), CASES)
def test_rule_matches_the_reference(prompt, lines, expected, why):
    assert ocr_reward(lines, quoted_text(prompt)) == pytest.approx(expected, abs=1e-12), why


def test_levenshtein_known_distances():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == levenshtein("abc", "") == 3
    assert levenshtein("flaw", "lawn") == 2
    assert levenshtein("same", "same") == 0


def test_reward_batch_with_failures_counted():
    prompts = [case[0] for case in CASES[:3]] + ['"ok" sign']
    outputs = [case[1] for case in CASES[:3]] + [RuntimeError("paddle crashed")]
    reward = OcrReward(recognizer=FakeRecognizer(outputs))
    out = reward([Image.new("RGB", (16, 16))] * 4, prompts)
    assert out.scores.tolist() == pytest.approx([1.0, 1.0, 0.75, 0.0])
    assert out.details["ocr_failed"].tolist() == [0.0, 0.0, 0.0, 1.0]
    assert not out.failures  # the reference's penalty is a score, not a NaN
    strict = OcrReward(recognizer=FakeRecognizer([RuntimeError("x")]), on_failure="nan")
    out = strict([Image.new("RGB", (8, 8))], ['"ok"'])
    assert math.isnan(out.scores[0]) and out.failures == {"recognition failed: RuntimeError": 1}


def test_recogniser_sees_rgb_images_from_tensors():
    fake = FakeRecognizer([[("hi", 1.0)]])
    OcrReward(recognizer=fake)(torch.rand(1, 3, 8, 8), ['"hi"'])
    assert fake.seen[0].mode == "RGB" and fake.seen[0].size == (8, 8)


def test_prompts_without_quoted_text_fail_at_start_naming_them():
    reward = OcrReward(recognizer=FakeRecognizer([]))
    reward.check_prompts(['"fine"', 'also "fine'], [{}, {}])
    with pytest.raises(ValueError, match='no quoted text to read: "a plain prompt"'):
        reward.check_prompts(['"fine"', "a plain prompt"], [{}, {}])
    with pytest.raises(ValueError, match=r'quoted text of prompt "an empty \" \" sign" is empty'):
        reward.check_prompts(['an empty " " sign'], [{}])
    with pytest.raises(ValueError, match="no quoted text"):
        reward([Image.new("RGB", (8, 8))], ["no quotes"])


def test_paddle_recogniser_folder_and_call_path(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="PaddleOCR det model"):
        PaddleOcrRecognizer(str(tmp_path))
    for part in ("det", "rec", "cls"):
        (tmp_path / part).mkdir()
        (tmp_path / part / "inference.pdmodel").write_bytes(b"")
        (tmp_path / part / "inference.pdiparams").write_bytes(b"")
    built, calls = {}, []

    class PaddleOCR:  # the paddleocr 2.x surface the reference uses
        def __init__(self, **kwargs):
            built.update(kwargs)

        def ocr(self, img, cls):
            calls.append((img.shape, img.dtype, cls))
            return (
                [[[[[0, 0]] * 4, ("Hello", 0.9)], [[[0, 0]] * 4, ("there", 0.0)]]]
                if len(calls) == 1
                else [None]
            )

    monkeypatch.setitem(sys.modules, "paddleocr", types.SimpleNamespace(PaddleOCR=PaddleOCR))
    recognizer = PaddleOcrRecognizer(str(tmp_path))
    assert recognizer(Image.new("RGB", (12, 10))) == [("Hello", 0.9), ("there", 0.0)]
    assert recognizer(Image.new("RGB", (12, 10))) == []  # PaddleOCR's "nothing found"
    assert built["use_angle_cls"] is False and built["lang"] == "en" and not built["use_gpu"]
    assert built["rec_model_dir"] == str(tmp_path / "rec")
    assert calls[0] == ((10, 12, 3), "uint8", False)


def test_config_requires_a_model_folder():
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    from tests.test_scalar_configs import CONF

    with pytest.raises(MissingMandatoryValue, match="model_dir"):
        build_reward(OmegaConf.load(CONF / "ocr.yaml"))
