"""Paraphrase deduplication: paraphrases merge, near misses never do, the pool remembers."""

import collections

import pytest
from PIL import Image

from rewards.judges.base import JudgeItem
from rewards.judges.pixel import PixelJudge, pixel_statements
from rubric_learning.dedup import statement_key
from rubric_learning.synthesis import RubricPool

PARAPHRASES = [
    ("The sky appears blue.", "the sky is blue"),
    (
        "The text is readable and the text is spelled correctly.",
        "The text is spelled correctly, and the text is legible.",
    ),
    ("The main subject is fully visible.", "The main subject is completely visible"),
    ("The image is highly saturated.", "The image has high colour saturation."),
    ("The image doesn't contain a watermark.", "The image does not show a watermark"),
    ("Each hand has five fingers.", "All hands have five fingers."),
    ("The picture is mostly red.", "The image is predominantly red."),
    ("The centre of the image is bright.", "The center of the image is clearly bright."),
    ("The sky is blue and the grass is green.", "The grass is green; the sky is blue."),
    ("The top-left cell of the image is red.", "The top left cell of the image is red"),
    ("The photo looks grey.", "The image is gray."),
]

NEAR_MISSES = [
    ("The image is bright.", "The image is dark."),
    ("The image is bright.", "The image is not bright."),
    ("The image is bright.", "The image is brighter."),
    ("The top half of the image is red.", "The bottom half of the image is red."),
    (
        "The left half of the image is brighter than the right half.",
        "The right half of the image is brighter than the left half.",
    ),
    ("A red car and a blue truck are visible.", "A blue car and a red truck are visible."),
    ("The dog is chasing the cat.", "The cat is chasing the dog."),
    ("Text is spelled correctly.", "Text is spelled incorrectly."),
    ("The main subject is fully visible.", "The main subject is partly visible."),
    ("The main subject is fully visible.", "The main subject is visible."),
    ("All hands have five fingers.", "Some hands have five fingers."),
    ("There are two cats.", "There are three cats."),
    ("The center of the image is red.", "The middle cell of the image is red."),
]


@pytest.mark.parametrize(("a", "b"), PARAPHRASES)
def test_paraphrases_share_a_key(a, b):
    assert statement_key(a) == statement_key(b)


@pytest.mark.parametrize(("a", "b"), NEAR_MISSES)
def test_near_misses_keep_apart(a, b):
    assert statement_key(a) != statement_key(b)


def test_the_grid_grammar_keeps_every_rule_apart_and_merges_what_the_judge_reads_alike():
    statements = pixel_statements("grid")
    keys = collections.Counter(statement_key(s) for s in statements)
    assert len(statements) == len(keys) == 1104  # 1,104 different rules, none merged

    image = Image.new("RGB", (36, 36), (200, 120, 40))
    judge = PixelJudge()
    for canonical, variant in [
        ("The image is predominantly red.", "The image is MOSTLY red"),
        ("The center of the image is bright.", "The centre of the image is bright"),
        ("The image has high saturation.", "The image has high colour saturation."),
        ("The top-left cell of the image is red.", "The top left cell of the image is red."),
    ]:
        assert statement_key(canonical) == statement_key(variant)
        probs = judge.yes_prob([JudgeItem(image, "", canonical), JudgeItem(image, "", variant)])
        assert probs.probs[0] == probs.probs[1] and not probs.failures  # the judge agrees


def test_extra_synonyms_come_from_the_config():
    assert statement_key("The logo is crisp.") != statement_key("The logo is sharp.")
    extra = {"crisp": "sharp"}
    assert statement_key("The logo is crisp.", extra) == statement_key("The logo is sharp.", extra)


def test_pool_rejects_paraphrases_and_dropped_rubrics_and_honours_the_budget():
    pool = RubricPool(min_words=3, max_rubrics=4)
    first = pool.add("The sky is blue.", {"round": 0})
    assert first is not None and first.id == "r0000"
    assert pool.add("the SKY is blue", {}) is None
    assert pool.add("The sky appears blue.", {}) is None
    assert pool.add("The grass is green.", {}) is not None
    assert pool.prune([1]) == [first]  # the fit zeroed "The sky is blue."
    assert pool.texts() == ["The grass is green."]
    assert pool.tried_texts() == ["The grass is green.", "The sky is blue."]
    assert pool.add("The sky looks blue.", {}) is None  # dropped once, never admitted again
    assert pool.add("A cat is visible.", {}).id == "r0002"  # ids run over everything admitted
    assert pool.add("A dog is visible.", {}) is not None
    assert pool.budget_spent and pool.admitted == 4
    assert pool.add("A bird is visible.", {}) is None
    assert pool.rejected == {
        "exact duplicate": 1,
        "paraphrase": 1,
        "previously dropped": 1,
        "judge budget": 1,
    }


def test_candidates_are_admitted_most_proposed_first_within_the_round_cap():
    pool = RubricPool(min_words=3)
    candidates = [
        ("A cat is visible.", {"pair_id": "p0"}),
        ("The sky is blue.", {"pair_id": "p0"}),
        ("The sky appears blue.", {"pair_id": "p1"}),
        ("The sky is blue", {"pair_id": "p2"}),
        ("The grass is green.", {"pair_id": "p2"}),
        ("The grass is green.", {"pair_id": "p3"}),
    ]
    added = pool.add_candidates(candidates, max_new=2)
    assert [r.text for r in added] == ["The sky is blue.", "The grass is green."]
    assert [r.provenance["votes"] for r in added] == [3, 2]
    assert pool.rejected["round cap"] == 1  # the cat, proposed once
    assert pool.rejected["paraphrase"] == 1 and pool.rejected["exact duplicate"] == 2
