"""A writer answer cut at max_new_tokens: its complete statements are kept, or it is re-asked."""

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from rewards.judges.base import Judge
from rubric_learning.learn import EmptyWorkingSetError, learn

CONF = str(Path(__file__).resolve().parents[1] / "conf")
STATEMENTS = [
    "The center of the image is red.",
    "The top half of the image is bright.",
    "The border of the image is blue.",
]


class LongWindedWriter(Judge):
    """Writes a long explanation before its list and stops at ``max_new_tokens`` words (one
    word, one token), as a VLM does when its budget runs out."""

    def yes_prob(self, items):
        raise NotImplementedError

    def generate(self, images, text, max_new_tokens=512):
        # 122 words of explanation, then the list (7 + 8 + 7 words)
        answer = "Looking closely, " + "the preferred image differs here. " * 24
        words = (answer + json.dumps(STATEMENTS)).split(" ")
        return " ".join(words[:max_new_tokens])


def run(tmp_path, max_new_tokens, retry):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose(
            "learn",
            overrides=[
                "experiment=synthetic",
                "data.num_train=16",
                "data.num_val=8",
                "data.num_test=8",
                "seeds.num=4",
                "rounds=1",
                f"generator._target_={__name__}.LongWindedWriter",
                *(
                    f"~generator.{key}"
                    for key in (
                        "grammar",
                        "rules_per_answer",
                        "random_per_answer",
                        "min_lead",
                        "comparison_penalty",
                        "tie_jitter",
                        "seed",
                    )
                ),
                f"synthesis.max_new_tokens={max_new_tokens}",
                f"synthesis.retry_max_new_tokens={retry or 'null'}",
            ],
        )
    final = learn(cfg, tmp_path)
    return final, json.loads((tmp_path / "report.json").read_text())


def test_an_answer_cut_inside_its_list_gives_its_complete_statements(tmp_path):
    final, _ = run(tmp_path, max_new_tokens=140, retry=None)  # cut inside the third statement
    assert final["cut_answers"] == {"cut in the list, statements kept": 4}
    assert (
        "cut_answers: {'cut in the list, statements kept': 4}"
        in (tmp_path / "report.md").read_text()
    )
    assert final["judge_budget_used"] == 2  # the two complete statements
    assert "unparseable answer" not in final["rejected_statements"]


def test_an_answer_cut_before_its_list_is_asked_again_with_a_larger_budget(tmp_path):
    final, _ = run(tmp_path, max_new_tokens=64, retry=512)
    assert final["cut_answers"] == {
        "cut in the list, statements kept": 0,
        "re-asked": 4,
        "re-asked, still no list": 0,
    }
    assert final["judge_budget_used"] == 3  # every statement of the full answers
    assert "unparseable answer" not in final["rejected_statements"]
    # Without a larger budget the same answers hold nothing: no statement to learn from.
    with pytest.raises(EmptyWorkingSetError, match="4 generator answers gave no rubric"):
        run(tmp_path / "no_retry", max_new_tokens=64, retry=None)
