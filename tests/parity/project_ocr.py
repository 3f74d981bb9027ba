"""Project side of the OCR parity test, run in the paddleocr environment (PaddleOCR is imported
there only): ``rewards.scalar.ocr.OcrReward`` with its PaddleOCR recogniser on the model folders
official_ocr.py wrote, on the same images and prompts; writes the scores and recognised lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the project, not installed here
from rewards.scalar.ocr import OcrReward, PaddleOcrRecognizer  # noqa: E402


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    recognizer = PaddleOcrRecognizer(spec["model_dir"])
    images = [Image.open(path) for path in spec["images"]]
    out = OcrReward(recognizer=recognizer)(images, spec["prompts"])
    lines = [recognizer(image.convert("RGB")) for image in images]
    Path(spec["result"]).write_text(json.dumps({"scores": out.scores.tolist(), "lines": lines}))


if __name__ == "__main__":
    main()
