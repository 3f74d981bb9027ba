"""The OCR reward through the real PaddleOCR against Flow-GRPO's scorer, both in the paddleocr
environment (paddlepaddle 2.6.2, paddleocr 2.9.1, python-Levenshtein).

official_ocr.py writes small Paddle inference models in the layout PaddleOCR reads (a detector
that finds bright rectangles, a recogniser that reads "Hello", an unused angle classifier), builds
PaddleOCR as ``flow_grpo/ocr.py`` does and scores with that scorer's steps and the real
``Levenshtein.distance``; project_ocr.py runs ``OcrReward`` with its ``PaddleOcrRecognizer`` on the
same folders, images and prompts. Nothing is downloaded: PaddleOCR would fetch any folder it does
not find, and the test would fail without network. The recognised lines (text and confidence) and
the rewards must be equal.
"""

from __future__ import annotations

import pytest
from PIL import Image, ImageDraw
from support import run_official

pytestmark = pytest.mark.parity

# Prompts against what the recogniser reads ("Hello" per box): contained, two lines joined,
# nothing read, a partial match, a longer target, a target nothing near.
PROMPTS = ['a "Hello" sign', '"hello hello"', '"Hello"', '"help"', 'a "HELLO WORLD" mural', '"x"']


def _image(boxes, mode="RGB") -> Image.Image:
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for box in boxes:
        draw.rectangle(box, fill=(255, 255, 255))
    return image.convert(mode)


def test_ocr_reward_equals_flow_grpo_scorer_on_paddleocr(tmp_path):
    images = {
        "one.png": _image([(20, 30, 150, 60)]),
        "two.png": _image([(10, 10, 180, 35), (10, 60, 180, 85)]),
        "none.png": _image([]),
        "grey.png": _image([(30, 20, 170, 70)], mode="L"),
    }
    paths = []
    for name, image in images.items():
        image.save(tmp_path / name)
        paths.append(str(tmp_path / name))
    paths = [paths[0], paths[1], paths[2], paths[3], paths[1], paths[0]]
    spec = {"model_dir": str(tmp_path / "paddleocr"), "text": "Hello", "images": paths,
            "prompts": PROMPTS}  # fmt: skip
    theirs = run_official("paddleocr", "official_ocr.py", spec, tmp_path)
    (tmp_path / "project").mkdir()
    ours = run_official("paddleocr", "project_ocr.py", spec, tmp_path / "project")
    assert ours["lines"] == theirs["lines"]
    assert ours["scores"] == pytest.approx(theirs["rewards"], abs=1e-6)
    assert theirs["rewards"] == pytest.approx([1.0, 1.0, 0.0, 0.5, 0.6, 0.0])  # by hand
    assert [len(lines) for lines in theirs["lines"]] == [1, 2, 0, 1, 2, 1]
