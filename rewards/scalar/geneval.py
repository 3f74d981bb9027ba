"""GenEval (Ghosh et al., 2023) as a reward and as a benchmark rule: is what a prompt's metadata
asks for (objects, counts, colours, relative positions) in the image, judged from an object
detector's output.

Two rules read the same detections:

- :func:`benchmark_rule`, the benchmark's (djghosh13/geneval ``evaluation/evaluate_images.py``,
  ``evaluate``, commit af4902f2): each ``include`` clause needs at least ``count`` detections of
  its class; colour and position are checked on the ``count`` most confident ones; an
  ``exclude`` clause fails when ``count`` or more of its class are found. Correct = every clause
  holds.
- :func:`reward_rule`, Flow-GRPO's reward (yifan123/reward-server ``reward_server/gen_eval.py``,
  ``evaluate_reward``, commit 92ac29fb): each ``include`` clause needs *exactly* ``count``
  detections; the partial score averages, over the checks made, ``1 - |count - found| / count``
  for the count and for the colour, and 0 or 1 for a position; ``exclude`` clauses are not read.
  It also returns the strict decision (every check passed). As in the source, a failed position
  check adds a 0 and then a 1 to the average, and a wrong count on a clause with a colour or a
  position adds one 0 for both.

Detections are kept as :func:`select_objects` keeps them (both sources agree): per class,
confidence above ``threshold`` (0.9 for ``counting`` prompts), most confident first, at most
``max_objects``, then optional overlap suppression. Relative position compares box centres
after shrinking the offset by ``position_threshold`` times the summed box sizes.

:class:`GenevalReward` runs a detector and a colour classifier (callables, so any backend fits;
:class:`MMDetDetector` and :class:`OpenClipColours` are the official Mask2Former and OpenCLIP
ViT-L-14 ones, which need mmdet 2.x / mmcv-full 1.x in their own environment behind the reward
service) and scores each image with :func:`reward_rule`: ``scores`` = the partial score (what
Flow-GRPO trains on), ``details["strict"]`` = the strict decision, ``details["correct"]`` = the
benchmark rule's (unless ``only_strict``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from rewards.base import Reward, RewardOutput
from rewards.scalar.common import TEXTS_DIR

COLORS = ["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
CLASSNAMES = (TEXTS_DIR / "geneval_object_names.txt").read_text().splitlines()

# One detection: its box [x1, y1, x2, y2, confidence] and its mask (bool [H, W]) or None.
Detection = tuple[np.ndarray, np.ndarray | None]
Objects = dict[str, list[Detection]]
# (image, detections of one class, class name) -> the colour name of each detection
ColourFn = Callable[[Image.Image, list[Detection], str], list[str]]
# image -> per class (in CLASSNAMES order) an [N, 5] box array, and per class N masks or None
DetectorFn = Callable[[Image.Image], tuple[list[np.ndarray], list[Any] | None]]


@dataclass(frozen=True)
class GenevalOptions:
    """The evaluation options of both sources (their defaults)."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0  # NMS IoU threshold; 1 = no suppression
    position_threshold: float = 0.1


def check_metadata(row: Any, where: str = "metadata") -> None:
    """One clear error for a row GenEval cannot score (no tag, no include list, bad clause)."""
    if not isinstance(row, dict) or row.get("tag") not in TAGS:
        tag = row.get("tag") if isinstance(row, dict) else None
        raise ValueError(f"GenEval: {where} has tag {tag!r}, expected one of {list(TAGS)}")
    clauses = row.get("include")
    if not isinstance(clauses, list) or not clauses:
        raise ValueError(f"GenEval: {where} has no 'include' list")
    for clause in clauses + list(row.get("exclude") or []):
        if not isinstance(clause, dict) or "class" not in clause or "count" not in clause:
            raise ValueError(f"GenEval: {where} has a clause without class/count: {clause}")


def compute_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """IoU of two boxes with the sources' inclusive pixel areas ``(x2 - x1 + 1)(y2 - y1 + 1)``."""

    def area(x1: float, y1: float, x2: float, y2: float) -> float:
        return max(x2 - x1 + 1, 0) * max(y2 - y1 + 1, 0)

    inter = area(max(box_a[0], box_b[0]), max(box_a[1], box_b[1]),
                 min(box_a[2], box_b[2]), min(box_a[3], box_b[3]))  # fmt: skip
    union = area(*box_a[:4]) + area(*box_b[:4]) - inter
    return inter / union if union else 0


def select_objects(
    boxes: Sequence[np.ndarray], masks: Sequence[Any] | None, tag: str, options: GenevalOptions
) -> Objects:
    """The detections each class keeps: above the confidence threshold, most confident first
    (stable for ties as ``np.argsort(...)[::-1]``), at most ``max_objects``, overlap-suppressed."""
    threshold = options.counting_threshold if tag == "counting" else options.threshold
    objects: Objects = {}
    for index, name in enumerate(CLASSNAMES):
        scores = np.asarray(boxes[index])[:, 4] if len(boxes[index]) else np.zeros(0)
        order = np.argsort(scores)[::-1]
        order = order[scores[order] > threshold][: options.max_objects].tolist()
        kept = []
        while order:
            best = order.pop(0)
            mask = None if masks is None else masks[index][best]
            kept.append((np.asarray(boxes[index][best]), mask))
            if options.max_overlap != 1:
                order = [
                    i for i in order
                    if compute_iou(boxes[index][best], boxes[index][i]) < options.max_overlap
                ]  # fmt: skip
        if kept:
            objects[name] = kept
    return objects


def relative_position(a: Detection, b: Detection, threshold: float) -> set[str]:
    """Where ``a`` lies relative to ``b``: a subset of left of / right of / above / below."""
    corners = np.array([a[0], b[0]])[:, :4].reshape(2, 2, 2)
    centre_a, centre_b = corners.mean(axis=-2)
    size_a, size_b = np.abs(np.diff(corners, axis=-2))[..., 0, :]
    offset = centre_a - centre_b
    revised = np.maximum(np.abs(offset) - threshold * (size_a + size_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def _colour_reason(clause: dict, colours: list[str]) -> str:
    found = ", ".join(f"{colours.count(c)} {c}" for c in COLORS if c in colours)
    return (f"expected {clause['color']} {clause['class']}>={clause['count']}, found "
            f"{colours.count(clause['color'])} {clause['color']}; and {found}")  # fmt: skip


def _position_failure(
    found: list[Detection], targets: list[Detection], relation: str, threshold: float
) -> str | None:
    """The first (object, target) pair whose relation is not ``relation``, as a reason."""
    for obj in found:
        for target in targets:
            true = relative_position(obj, target, threshold)
            if relation not in true:
                return f"expected {{}} {relation} target, found {' and '.join(true)} target"
    return None


def benchmark_rule(
    image: Image.Image, objects: Objects, metadata: dict, colours: ColourFn,
    options: GenevalOptions,
) -> tuple[bool, str]:  # fmt: skip
    """The GenEval benchmark's decision and reason (see the module docstring)."""
    correct, reasons, groups = True, [], []
    for clause in metadata.get("include", []):
        name, count = clause["class"], clause["count"]
        found = objects.get(name, [])[:count]
        matched = len(found) >= count
        if not matched:
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in clause:
                seen = colours(image, found, name)
                if seen.count(clause["color"]) < count:
                    matched = False
                    reasons.append(_colour_reason(clause, seen))
            if "position" in clause and matched:
                relation, group = clause["position"]
                if groups[group] is None:
                    matched = False
                    reasons.append(f"no target for {name} to be {relation}")
                else:
                    why = _position_failure(found, groups[group], relation,
                                            options.position_threshold)  # fmt: skip
                    if why is not None:
                        matched = False
                        reasons.append(why.format(name))
        correct &= matched
        groups.append(found if matched else None)
    for clause in metadata.get("exclude", []):
        name = clause["class"]
        if len(objects.get(name, [])) >= clause["count"]:
            correct = False
            reasons.append(f"expected {name}<{clause['count']}, found {len(objects[name])}")
    return correct, "\n".join(reasons)


def reward_rule(
    image: Image.Image, objects: Objects, metadata: dict, colours: ColourFn,
    options: GenevalOptions,
) -> tuple[bool, float, str]:  # fmt: skip
    """Flow-GRPO's strict decision, partial score and reason (see the module docstring)."""
    correct, reasons, groups, parts = True, [], [], []
    for clause in metadata.get("include", []):
        name, count = clause["class"], clause["count"]
        found = objects.get(name, [])
        parts.append(1 - abs(count - len(found)) / count)
        matched = len(found) == count
        if not matched:
            reasons.append(f"expected {name}=={count}, found {len(found)}")
            if "color" in clause or "position" in clause:
                parts.append(0.0)
        else:
            if "color" in clause:
                seen = colours(image, found, name)
                parts.append(1 - abs(count - seen.count(clause["color"])) / count)
                if seen.count(clause["color"]) != count:
                    matched = False
                    reasons.append(_colour_reason(clause, seen))
            if "position" in clause and matched:
                relation, group = clause["position"]
                if groups[group] is None:
                    matched = False
                    reasons.append(f"no target for {name} to be {relation}")
                    parts.append(0.0)
                else:
                    why = _position_failure(found, groups[group], relation,
                                            options.position_threshold)  # fmt: skip
                    if why is not None:
                        matched = False
                        reasons.append(why.format(name))
                        parts.append(0.0)
                    parts.append(1.0)  # the source appends it after a failure too
        correct &= matched
        groups.append(found if matched else None)
    score = sum(parts) / len(parts) if parts else 0
    return correct, score, "\n".join(reasons)


class GenevalReward(Reward):
    """Flow-GRPO's GenEval reward from a detector and a colour classifier (module docstring).

    ``detector`` and ``colours`` are callables (built from configs by Hydra); the metadata of each
    sample is its GenEval row (``tag``, ``include``, optional ``exclude``), checked at start-up
    by :meth:`check_prompts`. Images are EXIF-transposed before the colour crops, as both sources
    do.
    """

    name = "geneval"

    def __init__(
        self,
        detector: DetectorFn,
        colours: ColourFn,
        only_strict: bool = True,
        options: dict[str, float] | None = None,
    ) -> None:
        self.detector = detector
        self.colours = colours
        self.only_strict = bool(only_strict)
        self.options = GenevalOptions(**(options or {}))

    def check_prompts(self, prompts: Sequence[str], metadata: Sequence[dict[str, Any]]) -> None:
        for number, (prompt, row) in enumerate(zip(prompts, metadata), 1):
            check_metadata(row, f"row {number} ({prompt!r})")

    def score(
        self, images: list[Image.Image], prompts: list[str], metadata: list[dict[str, Any]]
    ) -> RewardOutput:
        self.check_prompts(prompts, metadata)
        scores, strict, correct = [], [], []
        for image, row in zip(images, metadata):
            boxes, masks = self.detector(image)
            objects = select_objects(boxes, masks, row["tag"], self.options)
            image = ImageOps.exif_transpose(image)
            ok, score, _ = reward_rule(image, objects, row, self.colours, self.options)
            scores.append(score)
            strict.append(float(ok))
            if not self.only_strict:
                correct.append(float(benchmark_rule(image, objects, row, self.colours,
                                                    self.options)[0]))  # fmt: skip
        details = {"strict": torch.tensor(strict)}
        if correct:
            details["correct"] = torch.tensor(correct)
        return RewardOutput(torch.tensor(scores, dtype=torch.float64), details)


class MMDetDetector:
    """The official detector: mmdet 2.x ``init_detector`` / ``inference_detector`` with
    Mask2Former (``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco``) from a local config and
    checkpoint. ``bgr=False`` passes the RGB array as Flow-GRPO's reward server does; ``bgr=True``
    hands mmdet the channel order it reads from files, as the benchmark's script does."""

    def __init__(self, config: str, checkpoint: str, device: str = "cuda", bgr: bool = False):
        for path in (config, checkpoint):
            if not Path(path).is_file():
                raise FileNotFoundError(f"GenEval detector: {path} is not a local file")
        from mmdet.apis import init_detector

        self.model = init_detector(config, checkpoint, device=device)
        self.bgr = bgr

    def __call__(self, image: Image.Image) -> tuple[list[np.ndarray], list[Any] | None]:
        from mmdet.apis import inference_detector

        array = np.array(image.convert("RGB"))
        result = inference_detector(self.model, array[..., ::-1].copy() if self.bgr else array)
        boxes = result[0] if isinstance(result, tuple) else result
        masks = result[1] if isinstance(result, tuple) and len(result) > 1 else None
        return boxes, masks


class OpenClipColours:
    """The official colour classifier: OpenCLIP ViT-L-14 (OpenAI weights from a local file)
    zero-shot over :data:`COLORS` with the three templates of both sources, on each detection's
    box crop with everything outside its mask painted ``#999``."""

    def __init__(self, checkpoint: str, device: str = "cuda", arch: str = "ViT-L-14") -> None:
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"GenEval colours: {checkpoint} is not a local file")
        import open_clip

        self.model, _, self.transform = open_clip.create_model_and_transforms(
            arch, pretrained=checkpoint, device=device
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.device = device
        self.classifiers: dict[str, torch.Tensor] = {}

    def _classifier(self, name: str) -> torch.Tensor:
        if name not in self.classifiers:
            from clip_benchmark.metrics import zeroshot_classification as zsc

            templates = [f"a photo of a {{c}} {name}", f"a photo of a {{c}}-colored {name}",
                         "a photo of a {c} object"]  # fmt: skip
            self.classifiers[name] = zsc.zero_shot_classifier(
                self.model, self.tokenizer, COLORS, templates, self.device
            )
        return self.classifiers[name]

    @torch.no_grad()
    def __call__(self, image: Image.Image, objects: list[Detection], name: str) -> list[str]:
        image = image.convert("RGB")
        blank = Image.new("RGB", image.size, color="#999")
        crops = []
        for box, mask in objects:
            shown = image if mask is None else Image.composite(image, blank, Image.fromarray(mask))
            crops.append(self.transform(shown.crop(tuple(box[:4]))))
        features = self.model.encode_image(torch.stack(crops).to(self.device))
        features = features / features.norm(dim=-1, keepdim=True)
        logits = 100.0 * features @ self._classifier(name)
        return [COLORS[i] for i in logits.argmax(1).tolist()]
