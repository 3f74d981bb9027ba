"""UnifiedReward (Wang et al., 2025): a Qwen2.5-VL chat model that writes its verdict as text.

The model is asked to judge prompt alignment and image quality and to end with
``Final Score: X``, X from 1 to 5. The score is parsed from the answer (see
:func:`parse_final_score`); an answer without a parseable score is NaN with reason
``"unparseable"``, a number outside [1, 5] NaN with reason ``"out_of_range"`` -- never 0, unlike
the Flow-GRPO client that turned such answers into a reward of 0.

Normalisations (``normalize``): ``"none"`` (1-5), ``"divide_5"`` (score / 5, in [0.2, 1]: the
scale Flow-GRPO trains with), ``"unit"`` ((score - 1) / 4, in [0, 1]).

Generation runs through :class:`rewards.judges.transformers_judge.TransformersJudge` (greedy, left
padded batches), so any chat VLM folder that ``AutoModelForImageTextToText`` loads works, e.g. a
local copy of ``CodeGoat24/UnifiedReward-qwen-7b``. The question is ``question_template`` with
``{prompt}`` filled in; the default is our own wording of the point-wise image-generation task
with the official answer format. For scores comparable to published numbers, put the official
evaluation prompt in a text file and pass it as ``question_file``.
"""

from __future__ import annotations

import re

import torch

from rewards.scalar.common import ScalarReward, require_dir, require_file

DEFAULT_QUESTION = (
    "Here is an image generated from the text caption below. Judge it on two things:\n"
    "1. Alignment with the caption: are the objects, their attributes and their relations as the "
    "caption describes them?\n"
    "2. Image quality: clarity, detail, colour and overall aesthetic appeal.\n"
    "Weigh both and give a score from 1 to 5 after 'Final Score:'.\n"
    "Text Caption: [{prompt}]"
)

SCORE_RANGE = (1.0, 5.0)

# "Final Score: 4", "**Final Score:** 3.5", "final score = 4/5", "Final Score: [2]" ...
_FINAL_SCORE = re.compile(
    r"final\s*score\s*\**\s*(?:[:=\-]|is)?\s*\**\s*\[?\s*([-+]?\d+(?:\.\d+)?)", re.IGNORECASE
)


def parse_final_score(
    answer: str, low: float = SCORE_RANGE[0], high: float = SCORE_RANGE[1]
) -> tuple[float, str | None]:
    """The last ``Final Score: X`` in ``answer`` -> ``(X, None)``; ``(nan, reason)`` when there is
    none (``"unparseable"``) or X lies outside ``[low, high]`` (``"out_of_range"``)."""
    matches = _FINAL_SCORE.findall(answer or "")
    if not matches:
        return float("nan"), "unparseable"
    value = float(matches[-1])
    if not low <= value <= high:
        return float("nan"), "out_of_range"
    return value, None


class UnifiedRewardReward(ScalarReward):
    """UnifiedReward point-wise score from a local chat VLM folder, parsed from its answer."""

    name = "unifiedreward"
    NORMALIZATIONS = {
        "none": lambda s: s,
        "divide_5": lambda s: s / 5.0,
        "unit": lambda s: (s - 1.0) / 4.0,
    }

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        dtype: str = "bfloat16",
        batch_size: int = 8,
        normalize: str = "divide_5",
        max_new_tokens: int = 256,
        image_size: int | None = None,
        question_template: str = DEFAULT_QUESTION,
        question_file: str | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size, normalize=normalize)
        self.path = require_dir(path, ("config.json",), "unifiedreward model")
        if question_file is not None:
            question_template = require_file(question_file, "unifiedreward question").read_text()
        if "{prompt}" not in question_template:
            raise ValueError("unifiedreward question_template must contain '{prompt}'")
        self.question_template = question_template
        self.max_new_tokens = int(max_new_tokens)
        self.image_size = image_size
        self.judge = None

    def load(self) -> None:
        from rewards.judges.transformers_judge import TransformersJudge

        self.judge = TransformersJudge(
            model_path=self.path, device=str(self.device), dtype=self.dtype,
            batch_size=self.batch_size,
        )  # fmt: skip

    def unload(self) -> None:
        self.judge = None

    def answers(self, images, prompts) -> list[str]:
        """The model's raw text answers (one greedy generation per image)."""
        if self.image_size:
            images = [im.resize((self.image_size, self.image_size)) for im in images]
        requests = [
            ([image], self.question_template.replace("{prompt}", prompt))
            for image, prompt in zip(images, prompts)
        ]
        return self.judge.generate_many(requests, max_new_tokens=self.max_new_tokens)

    def raw_scores(self, images, prompts):
        parsed = [parse_final_score(answer) for answer in self.answers(images, prompts)]
        scores = torch.tensor([value for value, _ in parsed], dtype=torch.float64)
        return scores, {}, [reason for _, reason in parsed]
