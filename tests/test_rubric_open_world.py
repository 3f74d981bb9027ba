"""The realistic synthetic world: open-vocabulary writer, noisy judge, people's own labels; and the
sweep's equal-budget round 0 (docs/rubric_learning.md has the 8-seed table)."""

import io
import re
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from rewards.judges.base import JudgeItem
from rewards.judges.pixel import PixelJudge, pixel_statements
from rubric_learning import sweep
from rubric_learning.dedup import statement_key
from rubric_learning.failures import extraction_requests
from rubric_learning.synthesis import parse_rubric_list, synthesis_requests
from rubric_learning.synthetic import build_world
from rubric_learning.synthetic_open import (
    OFF_GRAMMAR,
    OpenProposer,
    OpenWorldJudge,
    lexicon,
    surface_forms,
)

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def config(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose("learn", overrides=["experiment=synthetic_open", *overrides])


def image(rgb):
    return Image.new("RGB", (36, 36), rgb)


def test_every_spelling_reads_as_its_statement_and_the_dedup_merges_only_some():
    statements = pixel_statements("grid")
    table = lexicon("grid")
    merged = total = 0
    for statement in statements:
        forms = surface_forms(statement)
        assert forms[0] == statement and len(forms) >= 4
        for form in forms:
            assert table[form.lower().rstrip(".")] == statement  # none is ambiguous
        merged += sum(statement_key(f) == statement_key(statement) for f in forms[1:])
        total += len(forms) - 1
    assert 0 < merged / total < 0.2  # a few share the canonical key, most do not
    assert not any(s.lower().rstrip(".") in table for s in OFF_GRAMMAR)


def test_the_judge_is_the_pixel_judge_plus_calibration_error_and_noise():
    red, grey = image((220, 30, 30)), image((128, 128, 128))
    question = "The top-left cell of the image is red."
    spellings = [question, "The upper-left square is reddish.", "The top left cell is red."]
    exact = OpenWorldJudge(temperature=1.0, bias=0.0, noise=0.0)
    items = [JudgeItem(im, "", q) for im in (red, grey) for q in spellings]
    pixel = PixelJudge().yes_prob([JudgeItem(red, "", question), JudgeItem(grey, "", question)])
    probs = exact.yes_prob(items).probs.numpy().reshape(2, 3)
    np.testing.assert_allclose(probs, np.repeat(pixel.probs.numpy()[:, None], 3, 1), atol=1e-3)
    noisy = OpenWorldJudge()  # the preset's calibration error and noise
    first = noisy.yes_prob(items).probs.numpy().reshape(2, 3)
    assert (first[0] > 0.5).all() and (first[1] < first[0]).all()  # still informative
    assert len(set(np.round(first[0], 4))) == 3  # each spelling draws its own noise
    np.testing.assert_array_equal(noisy.yes_prob(items).probs.numpy().reshape(2, 3), first)
    assert noisy.canonical('Is "The upper-left square is reddish." true?') == question
    assert noisy.canonical("The composition is balanced.") is None


def test_off_grammar_answers_carry_no_preference_signal():
    cfg = config("data.num_train=200", "data.num_val=0", "data.num_test=0")
    pairs = instantiate(cfg.data, _convert_="all").train
    judge = OpenWorldJudge()
    images = [Image.open(io.BytesIO(b)) for p in pairs for b in (p.image_a, p.image_b)]
    labels = np.array([p.label for p in pairs])
    for text in OFF_GRAMMAR[:6]:
        probs = judge.yes_prob([JudgeItem(im, "", text) for im in images]).probs.numpy()
        diff = probs[0::2] - probs[1::2]
        agree = np.mean((diff > 0) == (labels == 1))
        assert abs(agree - 0.5) < 0.12  # chance, up to sampling error on 200 pairs


def test_labels_come_from_peoples_utility_not_the_judges():
    cfg = config("data.num_train=300", "data.num_val=0", "data.num_test=0")
    node = {k: v for k, v in cfg.data.items() if k != "_target_"}
    people = build_world(**node).train
    judge_world = build_world(**{**node, "human_gamma": 1.0, "human_gains": None, "taste_sd": 0})
    judge_world = judge_world.train
    same_images = sum(p.image_a == q.image_a for p, q in zip(people, judge_world))
    assert same_images < len(people)  # other utilities redraw other near-ties
    judge = PixelJudge()
    rules = [(r["text"], r["weight"]) for r in cfg.data.hidden_rules]
    imgs = [Image.open(io.BytesIO(b)) for p in people for b in (p.image_a, p.image_b)]
    items = [JudgeItem(im, "", text) for im in imgs for text, _ in rules]
    probs = judge.yes_prob(items).probs.double().numpy().reshape(len(imgs), len(rules))
    utility = (probs @ np.array([w for _, w in rules])).reshape(-1, 2)
    by_judge = (utility[:, 0] > utility[:, 1]).astype(float)
    labels = np.array([p.label for p in people])
    agreement = np.mean(by_judge == labels)
    assert 0.7 < agreement < 0.97  # related to the judge's utility, but not equal to it


def two_images():
    pairs = build_world(
        **{k: v for k, v in config("data.num_train=4").data.items() if k != "_target_"}
    )
    return pairs.train


def test_the_writer_spells_openly_strays_from_the_grammar_and_repeats_at_its_rates():
    pairs = two_images()
    requests = synthesis_requests(pairs)
    table = lexicon("grid")

    def answers(**kwargs):
        writer = OpenProposer(**kwargs)
        out = []
        for seed in range(30):
            writer.seed = seed
            for images, text in requests:
                out += parse_rubric_list(writer.generate(images, text))
        return out

    statements = answers()
    in_grammar = [s for s in statements if s.lower().rstrip(".") in table]
    canonical = [s for s in in_grammar if s in table.values()]
    off = [s for s in statements if s in OFF_GRAMMAR]
    assert len(in_grammar) + len(off) == len(statements)
    assert 0.3 < len(canonical) / len(in_grammar) < 0.6  # canonical_rate 0.4 (+ a few by chance)
    assert 0.7 < len(off) / (30 * len(requests)) < 1.3  # one per answer
    none = answers(canonical_rate=1.0, off_grammar_per_answer=0.0)
    assert all(s in table.values() for s in none)
    # Repeats: extraction requests list statements not to repeat.
    tried = pixel_statements("grid")[:40]
    pair = pairs[0]
    [(images, text)] = extraction_requests([pair], tried, ["colour"])
    listed = {statement_key(s) for s in tried}
    meanings = lambda answer: [statement_key(table.get(s.lower().rstrip("."), s)) for s in answer]  # noqa: E731
    obedient = OpenProposer(repeat_rate=0.0, off_grammar_per_answer=0.0, random_per_answer=0)
    careless = OpenProposer(repeat_rate=1.0, off_grammar_per_answer=0.0, random_per_answer=0)
    assert not set(meanings(obedient.propose(images, text))) & listed
    repeated = careless.propose(images, text)
    assert repeated and set(meanings(repeated)) <= listed


def test_the_writer_ranks_with_its_own_noisy_eyes():
    pairs = two_images()
    images, text = synthesis_requests(pairs)[0]
    plain = OpenProposer(
        rank_noise=0.0,
        view_gamma=1.0,
        view_gains=(1.0, 1.0, 1.0),
        canonical_rate=1.0,
        off_grammar_per_answer=0.0,
        random_per_answer=0,
    )
    own = OpenProposer(canonical_rate=1.0, off_grammar_per_answer=0.0, random_per_answer=0)
    firsts = []
    for seed in range(10):
        own.seed = seed
        firsts.append(tuple(own.propose(images, text)))
    assert len(set(firsts)) > 1  # noisy ranking: answers vary with the writer's seed
    assert any(f != tuple(plain.propose(images, text)) for f in firsts)


def test_hidden_rules_count_once_in_any_spelling(tmp_path):
    from rubric_learning.learn import HiddenRules
    from rubric_learning.synthesis import RubricPool

    judge = OpenWorldJudge()
    hidden = HiddenRules(
        [("The top-left cell of the image is red.", 1.0)], RubricPool(), judge.canonical
    )
    kept = [
        "The upper-left square is reddish.",
        "The top-left cell of the picture is red.",
        "The image is dark.",
    ]
    summary = hidden.summary(kept, kept)
    assert summary["hidden_kept"] == 1 and summary["distractors_kept"] == 1


def test_the_equal_budget_round_0_gets_the_loops_rubrics_and_writer_pairs(tmp_path, capsys):
    small = [
        "data.num_train=96",
        "data.num_val=48",
        "data.num_test=48",
        "rounds=3",
        "mining.per_round=8",
        "seeds.num=8",
        "budget.max_rubrics=40",
        "budget.max_new_per_round=12",
        "report.test_each_round=false",
    ]
    args = ["--experiment", "synthetic_open", "--seeds", "0", "--round0", "--out", str(tmp_path)]
    text = sweep.main([*args, *small])
    row = next(line for line in text.splitlines() if line.startswith("| 0 |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    scored, shown = cells[8], cells[9]
    loop, r0 = (int(x) for x in scored.split(" / "))
    assert loop == r0 and 0 < loop <= 40  # the same number of distinct rubrics scored
    loop_pairs, r0_pairs = (int(x) for x in shown.split(" / "))
    assert loop_pairs == r0_pairs > 8  # the loop's seed pairs and hard pairs, as seed pairs
    assert re.search(r"Loop minus equal-budget round 0 \(paired by seed\): -?\d\.\d{3}", text)
