"""Reference side of the OCR parity test; runs in the paddleocr environment (paddlepaddle 2.6.2,
paddleocr 2.9.1, python-Levenshtein: what Flow-GRPO's README installs).

The real PP-OCR weights cannot be fetched here and the paddleocr wheel ships no model-building
code, so this script first writes three small Paddle inference models (``paddle.jit.save``, the
``inference.pdmodel`` + ``inference.pdiparams`` layout PaddleOCR reads) with fixed weights:

- det: a probability map ``sigmoid(10 * channel mean)`` of the normalised image, so bright
  rectangles on a dark background are the text boxes DB post-processing finds;
- rec: CTC logits that do not depend on the crop and spell ``spec["text"]`` (a blank between
  repeated letters), confidence about 0.9;
- cls: a two-class head (never run: ``use_angle_cls=False``; PaddleOCR 2.x requires its folder).

Then it runs PaddleOCR exactly as yifan123/flow_grpo ``flow_grpo/ocr.py`` (``OcrScorer``, commit
ac4c86e8) builds and calls it, with the three folders given, and computes the reward with that
scorer's steps (restated from its source: Flow-GRPO is not a package): target
``prompt.split('"')[1]``; lines with confidence > 0 joined; spaces removed, lower-cased;
containment -> 0, else ``Levenshtein.distance`` capped at the target length; ``1 - dist / len``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import paddle
from Levenshtein import distance
from paddle import nn
from paddleocr import PaddleOCR
from PIL import Image


class Det(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.scale = self.create_parameter([1])
        self.scale.set_value(np.array([10.0], dtype="float32"))

    def forward(self, x):
        return nn.functional.sigmoid(self.scale * x.mean(axis=1, keepdim=True))


class Rec(nn.Layer):
    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.logits = self.create_parameter(list(logits.shape))
        self.logits.set_value(logits.astype("float32"))

    def forward(self, x):
        zero = x.mean(axis=[1, 2, 3]).reshape([-1, 1, 1]) * 0.0
        return nn.functional.softmax(zero + self.logits, axis=-1)


class Cls(nn.Layer):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return nn.functional.softmax(self.head(x.mean(axis=[2, 3])), axis=-1)


def rec_logits(text: str) -> np.ndarray:
    """[1, T, C] logits CTC-decoding to ``text`` with PaddleOCR's English dictionary."""
    import paddleocr

    dict_file = Path(paddleocr.__file__).parent / "ppocr" / "utils" / "en_dict.txt"
    chars = ["blank"] + dict_file.read_text(encoding="utf-8").splitlines() + [" "]
    steps = []
    for char in text:
        if steps and steps[-1] == chars.index(char):
            steps.append(0)  # a blank between repeated letters
        steps.append(chars.index(char))
    steps += [0] * (40 - len(steps))
    logits = np.zeros((1, len(steps), len(chars)))
    logits[0, np.arange(len(steps)), steps] = 6.0
    return logits


def save(layer: nn.Layer, folder: Path) -> None:
    spec = [paddle.static.InputSpec(shape=[None, 3, None, None], dtype="float32", name="x")]
    paddle.jit.save(paddle.jit.to_static(layer, input_spec=spec), str(folder / "inference"))


def flow_grpo_reward(ocr: PaddleOCR, image: np.ndarray, prompt: str) -> tuple[float, list]:
    prompt = prompt.split('"')[1]
    try:
        result = ocr.ocr(image, cls=False)
        lines = [[res[1][0], float(res[1][1])] for res in result[0]] if result[0] else []
        recognized_text = (
            "".join([res[1][0] if res[1][1] > 0 else "" for res in result[0]]) if result[0] else ""
        )
        recognized_text = recognized_text.replace(" ", "").lower()
        prompt = prompt.replace(" ", "").lower()
        dist = 0 if prompt in recognized_text else distance(recognized_text, prompt)
        dist = min(dist, len(prompt))
    except Exception as err:  # noqa: BLE001 - the reference's maximum penalty
        print(f"OCR processing failed: {err}")
        lines, dist = None, len(prompt)
    return 1 - dist / len(prompt), lines


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    root = Path(spec["model_dir"])
    for part, layer in (("det", Det()), ("rec", Rec(rec_logits(spec["text"]))), ("cls", Cls())):
        (root / part).mkdir(parents=True, exist_ok=True)
        save(layer, root / part)
    ocr = PaddleOCR(use_angle_cls=False, lang="en", use_gpu=False, show_log=False,
                    det_model_dir=str(root / "det"), rec_model_dir=str(root / "rec"),
                    cls_model_dir=str(root / "cls"))  # fmt: skip
    rewards, lines = [], []
    for path, prompt in zip(spec["images"], spec["prompts"]):
        reward, found = flow_grpo_reward(ocr, np.array(Image.open(path).convert("RGB")), prompt)
        rewards.append(reward)
        lines.append(found)
    Path(spec["result"]).write_text(json.dumps({"rewards": rewards, "lines": lines}))


if __name__ == "__main__":
    main()
