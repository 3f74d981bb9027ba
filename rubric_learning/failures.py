"""Failure-driven rubrics: for each hard pair, diagnose what the rubric set misses, then extract.

Stage 1 (diagnosis): the generative judge sees the prompt, both images, which one people
preferred and the current kept rubrics, and names the visual or semantic dimension those rubrics
miss. Stage 2 (extraction): given its own diagnosis and every statement already in the working set,
it writes new objective, reusable rubric statements as a JSON list (parsed and deduplicated like
the seed rubrics).
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from rubric_learning.pairs import PreferencePair
from rubric_learning.synthesis import pair_images, winner_and_loser

DIAGNOSIS_PROMPT = """You are auditing an evaluation rubric for text-to-image generation.
Both images were generated from this prompt: "{prompt}"
People preferred image {winner} over image {loser}, but the current rubric ranks them the other
way. The current rubric statements are:
{rubrics}

Compare the two images carefully. Which visual or semantic aspect that people cared about is not
covered by the statements above? Name that missing dimension and describe, in a few sentences,
how image {winner} and image {loser} differ along it.
"""

EXTRACTION_PROMPT = """Both images were generated from this prompt: "{prompt}"
People preferred image {winner} over image {loser}. An analysis of what the current rubric misses:
{diagnosis}

Write new rubric statements for that missing dimension: short, objective yes/no checks about a
single image, answered the same way by any careful viewer, satisfied by image {winner} and not by
image {loser}, and useful for judging other images too (do not name "image 1" or "image 2").
Do not repeat any of these statements (the current rubric and those already tried):
{rubrics}

Answer with a JSON list of strings only.
"""


def _listing(rubrics: Sequence[str]) -> str:
    return "\n".join(f"- {r}" for r in rubrics) if rubrics else "- (none yet)"


def diagnosis_requests(
    pairs: Sequence[PreferencePair], rubrics: Sequence[str]
) -> list[tuple[list[Image.Image], str]]:
    """Stage-1 (images, text) requests, one per hard pair (image 1 = A, image 2 = B)."""
    out = []
    for pair in pairs:
        winner, loser = winner_and_loser(pair.label)
        text = DIAGNOSIS_PROMPT.format(
            prompt=pair.prompt, winner=winner, loser=loser, rubrics=_listing(rubrics)
        )
        out.append((pair_images(pair), text))
    return out


def extraction_requests(
    pairs: Sequence[PreferencePair], tried: Sequence[str], diagnoses: Sequence[str]
) -> list[tuple[list[Image.Image], str]]:
    """Stage-2 requests: the same images, the diagnosis, and the statements not to repeat.

    ``tried`` is the whole working set, not only the kept rubrics: a statement that was already
    scored and dropped would only come back as a duplicate, so the answer is spent on dimensions
    not yet tried.
    """
    out = []
    for pair, diagnosis in zip(pairs, diagnoses, strict=True):
        winner, loser = winner_and_loser(pair.label)
        text = EXTRACTION_PROMPT.format(
            prompt=pair.prompt,
            winner=winner,
            loser=loser,
            diagnosis=diagnosis.strip(),
            rubrics=_listing(tried),
        )
        out.append((pair_images(pair), text))
    return out
