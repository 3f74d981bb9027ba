"""Rule synthesis: parsing generator answers (including garbage) and deduplicating statements."""

import pytest

from rubric_learning.synthesis import RubricParseError, RubricPool, parse_rubric_list


def test_parses_fenced_bare_and_object_lists():
    fenced = 'Image 1 wins.\n```json\n["The sky is blue.", "A cat is visible."]\n```\nDone [1]'
    assert parse_rubric_list(fenced) == ["The sky is blue.", "A cat is visible."]
    bare = 'Because of the light [see image 2]. Rules: ["Text is legible.", ""] thanks'
    assert parse_rubric_list(bare) == ["Text is legible."]
    objects = '{"rubrics": [{"rubric": "Hands have five fingers."}, {"text": "No watermark."}]}'
    assert parse_rubric_list(f"```\n{objects}\n```") == [
        "Hands have five fingers.",
        "No watermark.",
    ]


def test_an_empty_list_means_nothing_new_but_a_real_list_wins_wherever_it_stands():
    assert parse_rubric_list("All differences are covered.\n```json\n[]\n```") == []
    assert parse_rubric_list('Rules: ["Text is legible."] and nothing else []') == [
        "Text is legible."
    ]


@pytest.mark.parametrize(
    "answer", ['{"rubric": "a dict, not a list"}', "no list at all", "[unclosed", "ü#@ [1, 2] ü"]
)
def test_answers_without_a_statement_list_raise_a_clear_error(answer):
    with pytest.raises(RubricParseError, match="no JSON list of rubric statements"):
        parse_rubric_list(answer)


def test_pool_drops_exact_duplicates_and_paraphrases_and_counts_rejections():
    pool = RubricPool(min_words=3)
    assert pool.add("The main subject is fully visible.", {"round": 0}) is not None
    assert pool.add("the MAIN subject is fully visible", {}) is None  # exact after normalising
    assert pool.add("The main subject is clearly completely visible.", {}) is None  # paraphrase
    assert pool.add("The main subject is fully hidden.", {}) is not None  # a word replaced
    assert pool.add("Too short", {}) is None
    kept = pool.add("Text in the image is spelled correctly.", {"round": 1})
    assert kept.id == "r0002" and kept.provenance == {"round": 1}
    assert pool.texts()[2] == "Text in the image is spelled correctly."
    for text in (
        "The left half of the image is brighter than the right half.",
        "The right half of the image is brighter than the left half.",
    ):
        assert pool.add(text, {}) is not None  # same words, opposite rules
    assert pool.rejected == {"exact duplicate": 1, "paraphrase": 1, "length": 1}
    added, errors = pool.add_answers(["garbage", '["A cat is visible."]'], [{}, {}])
    assert [r.text for r in added] == ["A cat is visible."] and len(errors) == 1
    assert pool.rejected["unparseable answer"] == 1


def test_extraction_lists_every_tried_statement_so_the_proposer_moves_to_new_dimensions():
    import io

    from PIL import Image

    from rubric_learning.failures import extraction_requests
    from rubric_learning.pairs import PreferencePair
    from rubric_learning.synthetic import SyntheticProposer

    def png(value):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), value).save(buffer, format="PNG")
        return buffer.getvalue()

    pair = PreferencePair("p", "a tile", png((250, 250, 250)), png((10, 10, 10)), 1.0)
    proposer = SyntheticProposer(rules_per_answer=2, random_per_answer=0, min_lead=0.0)
    [(images, text)] = extraction_requests([pair], [], ["brightness"])
    first = proposer.propose(images, text)
    [(images, text)] = extraction_requests([pair], first, ["brightness"])
    assert all(f"- {s}" in text for s in first)
    second = proposer.propose(images, text)
    assert second and not set(second) & set(first)  # tried statements are not offered again


def test_an_answer_cut_inside_its_list_keeps_its_complete_statements():
    from rubric_learning.synthesis import cut_list_statements, read_answer

    cut = 'Image 1 is brighter.\n```json\n["The sky is blue.", "A cat is visible.", "The d'
    assert cut_list_statements(cut) == ["The sky is blue.", "A cat is visible."]
    assert read_answer(cut) == (["The sky is blue.", "A cat is visible."], True)
    assert read_answer('["The sky is blue."]') == (["The sky is blue."], False)
    assert cut_list_statements('{"rubrics": [{"rubric": "Text is legible."}, {"rub') == [
        "Text is legible."
    ]
    assert cut_list_statements("A long explanation that never reaches its list") == []
    assert cut_list_statements("[1, 2") == []  # no statement, and the 2 may itself be cut
    pool = RubricPool()
    added, errors = pool.add_answers([cut, "no list"], [{}, {}])
    assert [r.text for r in added] == ["The sky is blue.", "A cat is visible."]
    assert pool.cut_answers == 1 and len(errors) == 1
