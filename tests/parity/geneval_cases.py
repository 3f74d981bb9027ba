"""Hand-written GenEval cases: metadata rows as the benchmark writes them, the detector output
for the image (per class: [x1, y1, x2, y2, confidence] rows) and the colour the classifier gives
each box. Shared by the default rule tests (tests/test_scalar_geneval.py) and the parity test
against the official sources (tests/parity/test_parity_geneval.py)."""

from __future__ import annotations

import numpy as np

from rewards.scalar.geneval import CLASSNAMES

SIZE = (96, 80)  # image width, height


def _row(tag, include, prompt, exclude=None):
    row = {"tag": tag, "include": include, "prompt": prompt}
    if exclude is not None:
        row["exclude"] = exclude
    return row


# (name, metadata, {class: [(box + confidence), ...]}, {box (x1, y1, x2, y2): colour})
CASES = [
    ("single found", _row("single_object", [{"class": "bench", "count": 1}], "a bench"),
     {"bench": [(10, 10, 40, 30, 0.95)]}, {}),
    ("single under threshold", _row("single_object", [{"class": "cow", "count": 1}], "a cow"),
     {"cow": [(10, 10, 40, 30, 0.3)], "dog": [(5, 5, 20, 20, 0.99)]}, {}),
    ("single twice: partial", _row("single_object", [{"class": "cow", "count": 1}], "a cow"),
     {"cow": [(10, 10, 40, 30, 0.8), (50, 10, 90, 30, 0.7), (0, 0, 9, 9, 0.31)]}, {}),
    ("two objects one missing", _row("two_object", [{"class": "cup", "count": 1},
                                                    {"class": "fork", "count": 1}], "cup, fork"),
     {"cup": [(10, 10, 40, 30, 0.6)]}, {}),
    ("counting exact", _row("counting", [{"class": "clock", "count": 2}], "two clocks",
                            [{"class": "clock", "count": 3}]),
     {"clock": [(1, 1, 20, 20, 0.95), (30, 1, 50, 20, 0.92), (60, 1, 80, 20, 0.85)]}, {}),
    ("counting too many", _row("counting", [{"class": "clock", "count": 2}], "two clocks",
                               [{"class": "clock", "count": 3}]),
     {"clock": [(1, 1, 20, 20, 0.95), (30, 1, 50, 20, 0.92), (60, 1, 80, 20, 0.91)]}, {}),
    ("counting four of one", _row("counting", [{"class": "kite", "count": 4}], "four kites",
                                  [{"class": "kite", "count": 5}]),
     {"kite": [(1, 1, 20, 20, 0.95)]}, {}),
    ("colour right", _row("colors", [{"class": "car", "count": 1, "color": "red"}], "red car"),
     {"car": [(10, 10, 60, 50, 0.9)]}, {(10, 10, 60, 50): "red"}),
    ("colour wrong", _row("colors", [{"class": "car", "count": 1, "color": "red"}], "red car"),
     {"car": [(10, 10, 60, 50, 0.9)]}, {(10, 10, 60, 50): "blue"}),
    ("colour on extra object", _row("colors", [{"class": "car", "count": 1, "color": "red"}],
                                    "red car"),
     {"car": [(10, 10, 60, 50, 0.9), (61, 10, 90, 50, 0.5)]},
     {(10, 10, 60, 50): "red", (61, 10, 90, 50): "green"}),
    ("colour attr half", _row("color_attr", [{"class": "bus", "count": 1, "color": "green"},
                                             {"class": "dog", "count": 1, "color": "pink"}],
                              "green bus, pink dog"),
     {"bus": [(2, 2, 40, 40, 0.8)], "dog": [(50, 30, 90, 70, 0.7)]},
     {(2, 2, 40, 40): "green", (50, 30, 90, 70): "brown"}),
    ("position right", _row("position", [{"class": "teddy bear", "count": 1},
                                         {"class": "dog", "count": 1, "position": ["right of", 0]}],
                            "dog right of teddy bear"),
     {"teddy bear": [(5, 20, 30, 60, 0.9)], "dog": [(60, 25, 90, 55, 0.8)]}, {}),
    ("position wrong", _row("position", [{"class": "kite", "count": 1},
                                         {"class": "wine glass", "count": 1,
                                          "position": ["above", 0]}], "glass above kite"),
     {"kite": [(5, 5, 30, 30, 0.9)], "wine glass": [(50, 40, 70, 75, 0.8)]}, {}),
    ("position too close", _row("position", [{"class": "cup", "count": 1},
                                             {"class": "couch", "count": 1,
                                              "position": ["below", 0]}], "couch below cup"),
     {"cup": [(20, 20, 60, 40, 0.9)], "couch": [(22, 24, 62, 46, 0.8)]}, {}),
    ("position no target", _row("position", [{"class": "cup", "count": 1},
                                             {"class": "couch", "count": 1,
                                              "position": ["below", 0]}], "couch below cup"),
     {"couch": [(22, 50, 62, 76, 0.8)]}, {}),
    ("position diagonal", _row("position", [{"class": "bird", "count": 1},
                                            {"class": "cat", "count": 1,
                                             "position": ["left of", 0]}], "cat left of bird"),
     {"bird": [(60, 50, 90, 78, 0.9)], "cat": [(2, 2, 30, 30, 0.8)]}, {}),
    ("confidence ties and cap", _row("single_object", [{"class": "person", "count": 1}],
                                     "a person"),
     {"person": [(i, i, i + 10, i + 10, 0.5) for i in range(20)]}, {}),
]  # fmt: skip


def detector_output(objects: dict) -> list[np.ndarray]:
    """Per class in CLASSNAMES order, an [N, 5] float32 array (mmdet 2.x's bbox result)."""
    return [np.array(objects.get(name, []), dtype=np.float32).reshape(-1, 5) for name in CLASSNAMES]


def colour_fn(colours: dict):
    """Our colour callable for a case: the hand-written colour of each box."""

    def colours_of(image, detections, name):
        return [colours[tuple(int(v) for v in box[:4])] for box, _ in detections]

    return colours_of
