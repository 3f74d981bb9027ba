r"""UnifiedReward (Wang et al., 2025): a Qwen2.5-VL chat model that writes its verdict as text.

The model is asked to judge prompt alignment and image quality and to end with
``Final Score: X``, X from 1 to 5. Generation runs through
:class:`rewards.judges.transformers_judge.TransformersJudge` (greedy, left padded batches), so any
chat VLM folder that ``AutoModelForImageTextToText`` loads works, e.g. a local copy of
``CodeGoat24/UnifiedReward-qwen-7b``. One user turn holds the image, then the question.

Defaults follow the official point-wise image-generation inference script of UnifiedReward
(CodeGoat24/UnifiedReward,
``inference_qwen/image_generation/qwen_point_score_image_generation.py``): its question
(``question="official"``), 512 new tokens, the image at its own size. Flow-GRPO's client
(yifan123/flow_grpo, ``flow_grpo/rewards.py``, ``unifiedreward_score_sglang``) differs, and each
difference is an option: its shorter question, written for the LLaVA-based
UnifiedReward-7b-v1.5 and starting with ``<image>\n`` (``question="flow_grpo"``), and a resize of
every image to 512 x 512 first (``image_size=512``). Both questions are stored verbatim in
``rewards/scalar/texts/``; ``question`` may also be a template of one's own with ``{prompt}``, or
``question_file`` a file holding one.

Parse policy (``parse``). ``"strict"`` (default, :func:`parse_final_score`): the *last*
``Final Score: X`` in the answer, written in any of the usual ways (``**Final Score:** 3.5``,
``final score = 4/5``, ``Final Score: [2]``). No score is NaN with reason ``"unparseable"``, a
number outside [1, 5] NaN with reason ``"out_of_range"``; both are counted, never turned into a
number. ``"flow_grpo"`` (:func:`parse_flow_grpo`) reproduces Flow-GRPO's training signal: the
*first* match of ``Final Score:\s*([1-5](?:\.\d+)?)`` (case-sensitive), so ``Final Score: 10``
reads as 1, ``Final Score: 5.9`` as 5.9 and ``**Final Score:** 4`` as nothing, and an answer it
cannot read scores 0 (a reward of 0 after /5), counted under :data:`FLOW_GRPO_UNPARSED` so the run
still shows how often that happened.

Normalisations (``normalize``): ``"none"`` (1-5), ``"divide_5"`` (score / 5, in [0.2, 1]: the
scale Flow-GRPO trains with), ``"unit"`` ((score - 1) / 4, in [0, 1]).
"""

from __future__ import annotations

import re

import torch

from rewards.scalar.common import ScalarReward, model_text, require_dir, require_file

OFFICIAL_QUESTION = model_text("unifiedreward_point_score_question.txt")
FLOW_GRPO_QUESTION = model_text("unifiedreward_flow_grpo_question.txt")
QUESTIONS = {"official": OFFICIAL_QUESTION, "flow_grpo": FLOW_GRPO_QUESTION}
OFFICIAL_MAX_NEW_TOKENS = 512
FLOW_GRPO_IMAGE_SIZE = 512

SCORE_RANGE = (1.0, 5.0)
# yifan123/flow_grpo, flow_grpo/rewards.py, unifiedreward_score_sglang._extract_scores: the first
# re.search match of this pattern, 0.0 when there is none.
FLOW_GRPO_PATTERN = re.compile(r"Final Score:\s*([1-5](?:\.\d+)?)")
FLOW_GRPO_UNPARSED = "unparseable, scored 0 (parse=flow_grpo)"

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


def parse_flow_grpo(answer: str) -> tuple[float, str | None]:
    """Flow-GRPO's parse: the first ``Final Score: X`` with X read as one digit 1-5 and an
    optional decimal part -> ``(X, None)``; no match -> ``(0.0, FLOW_GRPO_UNPARSED)``, a real
    0 (Flow-GRPO trains on it) whose reason is still counted."""
    match = FLOW_GRPO_PATTERN.search(answer or "")
    if match is None:
        return 0.0, FLOW_GRPO_UNPARSED
    return float(match.group(1)), None


PARSERS = {"strict": parse_final_score, "flow_grpo": parse_flow_grpo}


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
        max_new_tokens: int = OFFICIAL_MAX_NEW_TOKENS,
        image_size: int | None = None,
        question: str = "official",
        question_file: str | None = None,
        parse: str = "strict",
    ) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size, normalize=normalize)
        if parse not in PARSERS:
            raise ValueError(f"unifiedreward parse must be one of {tuple(PARSERS)}, got {parse!r}")
        self.parse = parse
        self.path = require_dir(path, ("config.json",), "unifiedreward model")
        if question_file is not None:
            question = require_file(question_file, "unifiedreward question").read_text()
        template = QUESTIONS.get(question, question)
        if "{prompt}" not in template:
            raise ValueError(
                f"unifiedreward question must be one of {sorted(QUESTIONS)} or a template "
                f"containing '{{prompt}}', got {question[:60]!r}"
            )
        self.question_template = template
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
        parser = PARSERS[self.parse]
        parsed = [parser(answer) for answer in self.answers(images, prompts)]
        scores = torch.tensor([value for value, _ in parsed], dtype=torch.float64)
        return scores, {}, [reason for _, reason in parsed]
