"""GenEval's rules and summary against the official source files themselves, run on hand-written
detector outputs (tests/parity/geneval_cases.py).

The official code needs mmdet 2.x (mmcv-full 1.x, which PyPI has no wheel of) and a Mask2Former
checkpoint only to *produce* detections; the rules that turn detections into decisions are plain
numpy. So the official files are executed as they are, with their mmdet, open_clip and
clip_benchmark imports answered by stand-ins: the detector returns the case's boxes and the colour
classifier the case's colours (read from the crops' boxes it is handed). Everything between,
thresholds, ordering, the per-class cap, counting, colour and position checks, reasons and
scores, is the official code's. Sources: djghosh13/geneval at af4902f2 (``evaluation/
evaluate_images.py``, ``evaluation/summary_scores.py``) and yifan123/reward-server at 92ac29fb
(``reward_server/gen_eval.py``), cloned by make_envs.sh into ``$PARITY_ENVS/src/``.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from geneval_cases import CASES, SIZE, colour_fn, detector_output
from PIL import Image
from support import ENVS

from eval.geneval import summarize_results
from rewards.scalar.geneval import (
    COLORS,
    GenevalOptions,
    benchmark_rule,
    reward_rule,
    select_objects,
)

pytestmark = pytest.mark.parity
SOURCES = ENVS / "src"


def _source(repo: str, path: str) -> Path:
    file = SOURCES / repo / path
    if not file.is_file():  # make_envs.sh could not clone it (no GitHub from this machine)
        pytest.skip(f"official source {file} absent: make_envs.sh could not clone {repo}")
    return file


class _Stand:
    """What the official code imports besides numpy/torch/PIL, answering from the current case."""

    def __init__(self) -> None:
        self.queue: list = []  # detector outputs, one per image, in call order
        self.colours: dict = {}

    def modules(self) -> dict[str, types.ModuleType]:
        mmdet = types.ModuleType("mmdet")
        mmdet.__file__ = str(SOURCES / "mmdet" / "__init__.py")
        apis = types.ModuleType("mmdet.apis")
        apis.init_detector = lambda *args, **kwargs: "detector"
        apis.inference_detector = self.inference_detector
        mmdet.apis = apis
        open_clip = types.ModuleType("open_clip")
        open_clip.create_model_and_transforms = lambda *a, **k: ("clip", None, lambda im: 0)
        open_clip.get_tokenizer = lambda arch: "tokenizer"
        zsc = types.ModuleType("clip_benchmark.metrics.zeroshot_classification")
        zsc.zero_shot_classifier = lambda model, tok, names, templates, device: templates[0]
        zsc.run_classification = self.run_classification
        metrics = types.ModuleType("clip_benchmark.metrics")
        metrics.zeroshot_classification = zsc
        package = types.ModuleType("clip_benchmark")
        package.metrics = metrics
        return {"mmdet": mmdet, "mmdet.apis": apis, "open_clip": open_clip,
                "clip_benchmark": package, "clip_benchmark.metrics": metrics,
                "clip_benchmark.metrics.zeroshot_classification": zsc}  # fmt: skip

    def inference_detector(self, model, inputs):
        if isinstance(inputs, list):  # the reward server: a batch of arrays
            return [self.queue.pop(0) for _ in inputs]
        return self.queue.pop(0)  # the benchmark: one file path

    def run_classification(self, model, classifier, dataloader, device):
        boxes = [tuple(int(v) for v in box[:4]) for box, _ in dataloader.dataset._objects]
        logits = torch.zeros(len(boxes), len(COLORS))
        for row, box in enumerate(boxes):
            logits[row, COLORS.index(self.colours[box])] = 1.0
        return logits, None


@pytest.fixture
def stand(monkeypatch):
    stand = _Stand()
    for name, module in stand.modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    return stand


def _official_benchmark(monkeypatch) -> dict:
    """evaluate_images.py's namespace, its module-level settings as its __main__ sets them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # its `assert DEVICE == "cuda"`
    file = _source("geneval", "evaluation/evaluate_images.py")
    namespace = {"__name__": "official_geneval", "__file__": str(file)}
    exec(compile(file.read_text(), str(file), "exec"), namespace)  # noqa: S102
    names = (file.parent / "object_names.txt").read_text().splitlines()
    namespace.update(args=types.SimpleNamespace(options={}), object_detector="detector",
                     clip_model="clip", transform=lambda im: 0, tokenizer="tokenizer",
                     classnames=[n.strip() for n in names], THRESHOLD=0.3,
                     COUNTING_THRESHOLD=0.9, MAX_OBJECTS=16, NMS_THRESHOLD=1.0,
                     POSITION_THRESHOLD=0.1)  # fmt: skip
    return namespace


def _official_reward(monkeypatch):
    """reward-server's compute_geneval, loaded as its app loads it (from the repository root)."""
    root = SOURCES / "reward-server"
    file = _source("reward-server", "reward_server/gen_eval.py")
    monkeypatch.chdir(root)
    namespace = {"__name__": "official_reward_server", "__file__": str(file)}
    exec(compile(file.read_text(), str(file), "exec"), namespace)  # noqa: S102
    return namespace["load_geneval"]()


def _ours(row, found, colours):
    options = GenevalOptions()
    image = Image.new("RGB", SIZE)
    objects = select_objects(detector_output(found), None, row["tag"], options)
    correct, reason = benchmark_rule(image, objects, row, colour_fn(colours), options)
    strict, score, reward_reason = reward_rule(image, objects, row, colour_fn(colours), options)
    return correct, reason, strict, score, reward_reason


def test_rules_equal_the_official_sources(stand, monkeypatch, tmp_path):
    benchmark = _official_benchmark(monkeypatch)
    compute_geneval = _official_reward(monkeypatch)
    scores, reasons = set(), 0
    for name, row, found, colours in CASES:
        correct, reason, strict, score, reward_reason = _ours(row, found, colours)
        path = tmp_path / "0000.png"
        Image.new("RGB", SIZE).save(path)
        stand.colours = colours
        stand.queue = [detector_output(found)]
        theirs = benchmark["evaluate_image"](str(path), row)
        assert (theirs["correct"], theirs["reason"]) == (correct, reason), name
        stand.queue = [detector_output(found)]
        out = compute_geneval([Image.new("RGB", SIZE)], [row], only_strict=False)
        partial, rewards, strict_rewards, groups, strict_groups = out
        assert partial == [score] and strict_rewards == [float(strict)], name
        assert rewards == [float(correct)], name
        assert strict_groups[row["tag"]] == [float(strict)], name
        scores.add(score)
        reasons += bool(reason)
    assert len(scores) >= 6 and reasons >= 8  # the cases reach many branches


def test_summary_equals_summary_scores_py(tmp_path):
    """Our summary, printed as the official script prints it, equals its output on a hand-made
    results.jsonl (tags out of order, a prompt with several images, all wrong for one tag)."""
    import json

    rows = []
    for index, (_, row, _, _) in enumerate(CASES):
        for sample in range(1 + index % 3):
            ok = EXPECTED_OK[index * 7 % len(EXPECTED_OK)] ^ (sample == 1)
            rows.append({"filename": f"{index:05d}/samples/{sample:04d}.png", "tag": row["tag"],
                         "prompt": row["prompt"], "correct": ok, "reason": "",
                         "metadata": json.dumps(row), "details": "{}"})  # fmt: skip
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = _source("geneval", "evaluation/summary_scores.py")
    done = subprocess.run([sys.executable, str(script), str(results)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert summarize_results(results)["text"] == done.stdout
    fixture = Path(__file__).resolve().parents[1] / "fixtures_eval" / "geneval" / "results.jsonl"
    done = subprocess.run([sys.executable, str(script), str(fixture)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert summarize_results(fixture)["text"] == done.stdout  # the default suite's fixture


EXPECTED_OK = [True, False, True, True, False, False, True]
