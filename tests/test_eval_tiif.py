"""TIIF-Bench: official file formats, the official answer parsing, hand-checked summaries, and an
end-to-end run with the tiny SD3 that resumes without regenerating anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from eval.generation import GenerationConfig, build_pipeline
from eval.judging import JudgeOptions
from eval.tiif import (
    GROUPS,
    evaluate,
    load_tiif,
    parse_yes_no,
    result_path,
    run_tiif,
    summarize,
)
from rewards.judges.base import Judge, JudgeResult

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures_eval" / "tiif"
OFFICIAL = REPO.parent / "shared" / "benchmarks" / "tiif"
TINY_GEN = GenerationConfig(num_steps=1, height=32, width=32, batch_size=4)


class ScriptedJudge(Judge):
    """Answers 'no' to questions mentioning blue, 'yes' to the rest, and one line only (an
    unparseable answer) when a question mentions a sign."""

    name = "scripted"

    def __init__(self):
        self.calls = 0

    def yes_prob(self, items):
        return JudgeResult(torch.full((len(items),), float("nan")), ["no"] * len(items))

    def generate(self, images, text, max_new_tokens=512):
        self.calls += 1
        questions = [q for q in text.splitlines() if q.strip().endswith("?")]
        if any("sign" in q for q in questions):
            return "yes, there is a sign"
        return "\n".join(("no" if "blue" in q else "Yes") + " - because" for q in questions)


def test_parse_yes_no_follows_the_official_rule():
    assert parse_yes_no("Yes, a cat.\nno: none\n\nYES", 3) == ["yes", "no", "yes"]
    assert parse_yes_no("Sure!\nyes\nno", 2) == ["yes", "no"]  # other lines are ignored
    assert parse_yes_no("yes\nno", 3) is None  # count mismatch -> unparseable
    assert parse_yes_no("yesterday\nnobody", 2) is None  # whole words only


def test_load_fixture_and_layout():
    cases = load_tiif(FIX / "prompts", FIX / "eval_prompts")
    assert [c.type for c in cases] == ["color+2d", "color+2d", "shape+color", "text"]
    assert cases[1].index == 1 and cases[3].answers == ("yes", "yes", "no")
    path = result_path(Path("r"), "m", cases[1], "long_description")
    assert path == Path("r/m/color+2d/long/1.json")
    assert len(load_tiif(FIX / "prompts", FIX / "eval_prompts", limit_per_type=1)) == 3


def test_misaligned_files_fail_naming_them(tmp_path):
    (tmp_path / "p").mkdir(), (tmp_path / "e").mkdir()
    (tmp_path / "p" / "text_prompts.jsonl").write_text(
        (FIX / "prompts" / "color+2d_prompts.jsonl").read_text()
    )
    (tmp_path / "e" / "text_eval_prompts.jsonl").write_text(
        (FIX / "eval_prompts" / "text_eval_prompts.jsonl").read_text()
    )
    with pytest.raises(ValueError, match="text_prompts.jsonl has 2 lines"):
        load_tiif(tmp_path / "p", tmp_path / "e")
    with pytest.raises(FileNotFoundError, match="TIIF folder not found: .*nowhere"):
        load_tiif(tmp_path / "p", tmp_path / "nowhere")


def test_summary_by_hand_short_and_long_separate(tmp_path):
    """Short: every answer right. Long: the first answer of each image flipped, and the text
    image's result missing (all wrong)."""
    cases = load_tiif(FIX / "prompts", FIX / "eval_prompts")
    for case in cases:
        for desc in ("short_description", "long_description"):
            preds = list(case.answers)
            if desc.startswith("long"):
                preds[0] = "no" if preds[0] == "yes" else "yes"
                if case.type == "text":
                    continue
            path = result_path(tmp_path, "m", case, desc)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"model_pred": preds, "gt_answers": list(case.answers)}))
    s = summarize(cases, tmp_path, "m")
    assert s["types"]["color+2d"]["long"]["correct"] == 5  # 3/4 + 2/3
    assert s["types"]["text"]["long"]["unparsed_images"] == 1
    assert s["groups"]["Attribute"]["long"] == pytest.approx(4 / 5)
    assert s["groups"]["Attribute+Relation"]["long"] == pytest.approx(5 / 7)
    assert s["groups"]["Text Generation"]["long"] == 0.0
    assert s["overall"]["long"] == pytest.approx((4 / 5 + 5 / 7 + 0) / 3)
    assert s["overall"]["short"] == 1.0
    assert s["levels"]["advanced"]["long"] == pytest.approx((5 / 7 + 0) / 2)


def test_end_to_end_tiny_sd3_scripted_judge_and_resume(tmp_path):
    cases = load_tiif(FIX / "prompts", FIX / "eval_prompts")
    pipe = build_pipeline({"name": "tiny", "seed": 0, "dtype": "float32"}, None, "cpu")
    judge = ScriptedJudge()
    opts = JudgeOptions(answer_mode="generate", batch_size=3)
    summary = run_tiif(pipe, judge, cases, tmp_path, "tiny", TINY_GEN, opts)
    # color+2d 7/7, shape+color 4/5 (the blue book), text 0/3 (unparseable) - short and long.
    for key in ("short", "long"):
        assert summary["groups"]["Attribute+Relation"][key] == 1.0
        assert summary["groups"]["Attribute"][key] == pytest.approx(0.8)
        assert summary["groups"]["Text Generation"][key] == 0.0
        assert summary["overall"][key] == pytest.approx(0.6)
        assert summary["types"]["text"][key]["unparsed_images"] == 1
    image = tmp_path / "images" / "color+2d" / "tiny" / "long_description" / "1.png"
    result = json.loads((tmp_path / "eval_results/tiny/text/short/0.json").read_text())
    assert image.is_file()
    assert set(result) >= {"attribute", "desc", "jsonl_file", "line_idx", "questions",
                           "gt_answers", "model_pred", "model_output"}  # fmt: skip
    assert result["model_pred"] == ["invalid"] * 3
    assert result["jsonl_file"] == "text_eval_prompts.jsonl"  # the official script's value
    assert (tmp_path / "summary.md").read_text().count("|") > 20

    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")}
    results = {p: p.stat().st_mtime_ns for p in (tmp_path / "eval_results").rglob("*.json")}
    calls = judge.calls
    run_tiif(pipe, judge, cases, tmp_path, "tiny", TINY_GEN, opts)
    assert judge.calls == calls  # nothing judged again
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.png")} == stamps
    assert len(stamps) == 8 and len(results) == 8

    # An image lost after judging is made again, and its old judgement (of the lost image) is
    # replaced; every other image and judgement stays as it was.
    image.unlink()
    run_tiif(pipe, judge, cases, tmp_path, "tiny", TINY_GEN, opts)
    assert judge.calls == calls + 1
    redone = tmp_path / "eval_results/tiny/color+2d/long/1.json"
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "eval_results").rglob("*.json")}
    assert {p for p in after if after[p] != results[p]} == {redone}


class RecordingJudge(ScriptedJudge):
    """The scripted answers, remembering every prompt it was sent."""

    def __init__(self):
        super().__init__()
        self.prompts = []

    def generate(self, images, text, max_new_tokens=512):
        self.prompts.append(text)
        return super().generate(images, text, max_new_tokens)


def test_template_list_picks_a_stable_wording_per_image(tmp_path):
    """judging.template as a list (the official script's three wordings, say): each image gets
    one, chosen by its key, so a rerun asks every image exactly as before."""
    cases = load_tiif(FIX / "prompts", FIX / "eval_prompts")
    for case in cases:  # skip_generation: images made elsewhere
        for desc in ("short_description", "long_description"):
            path = tmp_path / "images" / case.type / "m" / desc / f"{case.index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(path)
    opts = JudgeOptions(template=["First wording.\n{questions}", "Second wording.\n{questions}"])
    first = RecordingJudge()
    run_tiif(None, first, cases, tmp_path, "m", TINY_GEN, opts)
    openings = [p.split("\n")[0] for p in first.prompts]
    assert len(openings) == 8 and set(openings) == {"First wording.", "Second wording."}
    shutil.rmtree(tmp_path / "eval_results")
    again = RecordingJudge()
    run_tiif(None, again, cases, tmp_path, "m", TINY_GEN, opts)
    assert again.prompts == first.prompts
    with pytest.raises(ValueError, match="lacks"):
        bad = JudgeOptions(template=["no placeholder"])
        run_tiif(None, RecordingJudge(), cases, tmp_path, "m", TINY_GEN, bad)


def test_command_tiny_model_pixel_judge_yes_prob(tmp_path):
    """The command line with the tiny SD3 and the pixel judge: TIIF questions are outside the
    pixel grammar, so every answer is unanswered and counted wrong (score 0, not an error)."""
    overrides = [
        "model=tiny", "judge=pixel",
        f"data.prompt_dir={FIX / 'prompts'}", f"data.eval_dir={FIX / 'eval_prompts'}",
        "data.types=[text]", "judging.answer_mode=yes_prob", "generation.num_steps=1",
        "generation.height=32", "generation.width=32",
    ]  # fmt: skip
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        evaluate(compose("tiif", overrides=overrides), tmp_path)  # what `python -m eval.tiif` runs
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["types"]["text"]["short"] == {
        "correct": 0, "total": 3, "unparsed_images": 1, "images": 1, "score": 0.0
    }  # fmt: skip
    assert (tmp_path / "images/text/tiny/short_description/0.png").is_file()
    # Resuming into this folder with other sampling settings would mix images: refused. A
    # knob that changes only speed (the batch size) resumes.
    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        changed = compose("tiif", overrides=[*overrides, "generation.num_steps=2"])
        faster = compose("tiif", overrides=[*overrides, "generation.batch_size=2"])
    with pytest.raises(ValueError, match=r"other \['generation'\] settings"):
        evaluate(changed, tmp_path)
    assert evaluate(faster, tmp_path)["types"] == summary["types"]


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason="official TIIF-Bench files absent")
@pytest.mark.parametrize(("split", "count"), [("testmini", 277), ("test", 2538)])
def test_official_tiif_files_parse(split, count):
    cases = load_tiif(OFFICIAL / f"{split}_prompts", OFFICIAL / f"{split}_eval_prompts")
    assert len(cases) == count
    grouped = {t for _, members in GROUPS.values() for t in members}
    assert {c.type for c in cases} == grouped
