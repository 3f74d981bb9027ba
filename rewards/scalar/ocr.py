"""The OCR reward of Flow-GRPO's visual text rendering task (yifan123/flow_grpo
``flow_grpo/ocr.py``, ``OcrScorer``, commit ac4c86e8): how closely the text a recogniser reads in
the image matches the text the prompt asks for.

Rule, as the reference computes it:

1. the target is the prompt's text after its first double quote, up to the next one
   (``prompt.split('"')[1]``);
2. the recognised text is the recogniser's lines joined without separator, each line whose
   confidence is not above 0 dropped;
3. both lose their spaces (only ``" "``) and are lower-cased;
4. a target contained in the recognised text scores 1; otherwise the Levenshtein distance (unit
   insert, delete and substitute costs), capped at the target's length, gives
   ``1 - distance / len(target)``, in [0, 1];
5. a recogniser that fails on an image gets the maximum penalty, 0 (``on_failure="penalty"``, the
   reference's rule; counted in ``details["ocr_failed"]``), or NaN with the reason
   (``on_failure="nan"``, the project's policy elsewhere).

A prompt with no double quote, or whose quoted text is empty once its spaces are removed, can
never be scored (the reference would crash on it mid-run): :meth:`OcrReward.check_prompts` refuses
it at start-up, naming it.

The recogniser is PaddleOCR (``paddleocr`` 2.x, as Flow-GRPO pins 2.9.1 with paddlepaddle 2.6.2),
built exactly as the reference builds it (English, no angle classifier) but from local model
folders, so nothing is downloaded. PaddleOCR's dependencies clash with the trainer's; run it in its
own environment behind the reward service (``python -m rewards.serve_reward reward=ocr``, see
docs/scalar_rewards.md). Images reach PaddleOCR as the reference passes them: an RGB uint8 array.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rewards.base import Reward, RewardOutput
from rewards.scalar.common import require_dir

log = logging.getLogger(__name__)

# What a recogniser returns for one image: its text lines with their confidences.
Lines = list[tuple[str, float]]
PADDLE_MODEL_FILES = ("inference.pdmodel", "inference.pdiparams")  # what PaddleOCR 2.x looks for


def quoted_text(prompt: str) -> str:
    """The text the prompt asks to render: after its first ``"``, up to the next one (or the end
    of the prompt when there is no second quote, as ``prompt.split('"')[1]`` gives)."""
    parts = prompt.split('"')
    if len(parts) < 2:
        raise ValueError(f'OCR reward: prompt has no quoted text to read: "{prompt}"')
    return parts[1]


def check_ocr_prompt(prompt: str) -> None:
    """Refuse a prompt the reward can never score: no double quote, or an empty quoted text."""
    if not _normalise(quoted_text(prompt)):
        raise ValueError(f'OCR reward: the quoted text of prompt "{prompt}" is empty')


def _normalise(text: str) -> str:
    return text.replace(" ", "").lower()


def levenshtein(a: str, b: str) -> int:
    """Edit distance with unit costs for insertion, deletion and substitution."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b))
            )
        previous = current
    return previous[-1]


def recognised_text(lines: Lines) -> str:
    """The lines joined without separator, lines of confidence <= 0 dropped."""
    return "".join(text if confidence > 0 else "" for text, confidence in lines)


def ocr_reward(lines: Lines, target: str) -> float:
    """``1 - min(distance, len) / len`` of the normalised target against the normalised text
    (1 when the text contains the target); see the module docstring."""
    text, target = _normalise(recognised_text(lines)), _normalise(target)
    if not target:
        raise ValueError("OCR reward: the quoted text is empty once its spaces are removed")
    distance = 0 if target in text else min(levenshtein(text, target), len(target))
    return 1 - distance / len(target)


class PaddleOcrRecognizer:
    """PaddleOCR 2.x built as Flow-GRPO builds it (``lang="en"``, ``use_angle_cls=False``), its
    detection, recognition and angle-classifier models read from ``model_dir/det``,
    ``model_dir/rec`` and ``model_dir/cls`` (Paddle inference folders: ``inference.pdmodel`` +
    ``inference.pdiparams``, e.g. ``en_PP-OCRv3_det_infer``, ``en_PP-OCRv4_rec_infer`` and
    ``ch_ppocr_mobile_v2.0_cls_infer``, what PaddleOCR 2.9 fetches for English). The classifier is
    never run; PaddleOCR 2.x only insists on finding it. Loaded on first use."""

    def __init__(self, model_dir: str, device: str = "cpu") -> None:
        root = Path(model_dir).expanduser()
        self.dirs = {
            part: require_dir(root / part, PADDLE_MODEL_FILES, f"PaddleOCR {part} model")
            for part in ("det", "rec", "cls")
        }
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise ValueError(f"PaddleOCR device must be cpu or cuda[:N], got {device!r}")
        self.device = device
        self._ocr = None

    def _load(self):
        from paddleocr import PaddleOCR

        return PaddleOCR(
            use_angle_cls=False,
            lang="en",
            use_gpu=self.device != "cpu",
            show_log=False,
            det_model_dir=str(self.dirs["det"]),
            rec_model_dir=str(self.dirs["rec"]),
            cls_model_dir=str(self.dirs["cls"]),
        )

    def __call__(self, image: Image.Image) -> Lines:
        if self._ocr is None:
            self._ocr = self._load()
        result = self._ocr.ocr(np.array(image), cls=False)
        page = result[0] if result else None
        return [(str(text), float(confidence)) for _, (text, confidence) in page or []]

    def release(self) -> None:
        self._ocr = None


class OcrReward(Reward):
    """Flow-GRPO's OCR reward (see the module docstring) over any recogniser: a callable from an
    RGB PIL image to its ``[(text, confidence), ...]`` lines (default: PaddleOCR)."""

    name = "ocr"

    def __init__(
        self,
        recognizer: Callable[[Image.Image], Lines] | None = None,
        model_dir: str | None = None,
        device: str = "cpu",
        on_failure: str = "penalty",
    ) -> None:
        if on_failure not in ("penalty", "nan"):
            raise ValueError(f"ocr: on_failure must be 'penalty' or 'nan', got {on_failure!r}")
        if recognizer is None:
            if model_dir is None:
                raise FileNotFoundError(
                    "ocr: no local PaddleOCR folder given (reward.model_dir=<folder with det/, "
                    "rec/ and cls/>)"
                )
            recognizer = PaddleOcrRecognizer(model_dir, device)
        self.recognizer = recognizer
        self.on_failure = on_failure

    def check_prompts(self, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]) -> None:
        for prompt in prompts:
            check_ocr_prompt(prompt)

    def score(
        self, images: list[Image.Image], prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        self.check_prompts(prompts, metadata)
        scores, failed, reasons = [], [], []
        for image, prompt in zip(images, prompts):
            target = quoted_text(prompt)
            try:
                scores.append(ocr_reward(self.recognizer(image), target))
                failed.append(0.0)
            except Exception as err:  # noqa: BLE001 - the reference scores any failure
                log.warning("ocr: recognition failed (%s: %s)", type(err).__name__, err)
                failed.append(1.0)
                if self.on_failure == "nan":
                    scores.append(float("nan"))
                    reasons.append(f"recognition failed: {type(err).__name__}")
                else:
                    scores.append(0.0)  # distance = len(target): the maximum penalty
        out = RewardOutput(torch.tensor(scores), {"ocr_failed": torch.tensor(failed)})
        out.failures.update(reasons)
        return out

    def release(self) -> None:
        release = getattr(self.recognizer, "release", None)
        if release is not None:
            release()
