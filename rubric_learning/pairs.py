"""Preference pairs: one type, loaders for each benchmark's own format, image checks, splits.

A :class:`PreferencePair` holds a prompt, two images (a file path or the encoded bytes) and a
label: 1.0 when image A is preferred, 0.0 when B is, 0.5 for a tie. Every loader maps its format
onto this type and nothing else, so the rest of rubric learning never sees a benchmark's layout.

Loaders (each usable as a Hydra ``_target_`` of the ``data`` node):

- :func:`load_jsonl`: one pair per line, ``{"id", "prompt", "image_a", "image_b", "label"}``
  (``label`` may be ``"A"``/``"B"``/``"tie"`` or 1/0/0.5; image paths relative to the file).
- :func:`load_hpdv3`: HPDv3 ``test.json``, a list of ``{prompt, path1, path2, model1, model2}``
  where ``path1`` is always preferred; A/B are shuffled with a seed so labels are balanced.
- :func:`load_pickapic`: Pick-a-Pic v2 parquet (one file or a folder of shards) with ``caption``,
  ``jpg_0``, ``jpg_1`` (bytes) and ``label_0`` (1, 0 or 0.5 for a tie).
- :func:`load_mmrb2`: Multimodal RewardBench 2 text-to-image JSON (``{"pairs": [...]}``) with
  images in a folder; the prompt text comes from ``prompt_content`` (full release) or from a
  separate id -> prompt file (metadata-only release).
  MMRB2 is an evaluation benchmark (CC BY-NC, not to be trained on): use it as a test set.

:func:`drop_unreadable` opens every image once and drops pairs whose image is missing or corrupt,
counting each reason; :func:`pair_hash` identifies a comparison by its prompt and image content
(what a rubric set records of its training pairs, so evaluation can leave them out);
:func:`split_pairs` makes seeded train/validation/test splits that keep all pairs of one prompt in
the same split.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

ImageRef = str | bytes
TIE = 0.5


class PairDataError(ValueError):
    """A preference file that cannot be read as the format it claims to be."""


class CorruptImageError(ValueError):
    """An image file or byte string that PIL cannot decode."""


@dataclass(frozen=True)
class PreferencePair:
    """Prompt, two images (path or encoded bytes) and which one people preferred."""

    id: str
    prompt: str
    image_a: ImageRef
    image_b: ImageRef
    label: float
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_tie(self) -> bool:
        return self.label == TIE

    def swapped(self) -> PreferencePair:
        """The same comparison with A and B exchanged (the label flips with them)."""
        return replace(self, image_a=self.image_b, image_b=self.image_a, label=1.0 - self.label)


# ----------------------------------------------------------------------------- images


def image_bytes(ref: ImageRef) -> bytes:
    """The encoded bytes of an image reference (reads the file for a path)."""
    if isinstance(ref, bytes):
        return ref
    path = Path(ref)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    return path.read_bytes()


def open_image(ref: ImageRef) -> Image.Image:
    """Decode an image reference to RGB; a missing or corrupt image raises naming it."""
    data = image_bytes(ref)
    name = ref if isinstance(ref, str) else f"<{len(data)} bytes>"
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(f"corrupt image {name}: {err}") from err


def content_hash(ref: ImageRef) -> str:
    """A short hash of the image's encoded content (the score cache's image key)."""
    return hashlib.sha1(image_bytes(ref)).hexdigest()


def pair_hash(pair: PreferencePair, image_hash: Callable[[ImageRef], str] = content_hash) -> str:
    """The identity of a comparison, wherever it was loaded from: its prompt (whitespace and case
    folded) and its two images' content, in either order (loaders may swap A and B). The label is
    left out: the same two images under another label are still the same pair to learn from."""
    images = sorted(image_hash(ref) for ref in (pair.image_a, pair.image_b))
    prompt = " ".join(pair.prompt.lower().split())
    return hashlib.sha256("\n".join([prompt, *images]).encode()).hexdigest()


def drop_unreadable(pairs: Sequence[PreferencePair]) -> tuple[list[PreferencePair], Counter]:
    """Keep the pairs whose two images decode; count the others by reason.

    Each image is decoded fully (not just its header), so truncated files are caught here rather
    than halfway through a scoring run.
    """
    kept, dropped = [], Counter()
    for pair in pairs:
        try:
            for ref in (pair.image_a, pair.image_b):
                open_image(ref).load()
        except FileNotFoundError as err:
            dropped["missing image"] += 1
            log.warning("pair %s skipped: %s", pair.id, err)
            continue
        except CorruptImageError as err:
            dropped["corrupt image"] += 1
            log.warning("pair %s skipped: %s", pair.id, err)
            continue
        kept.append(pair)
    return kept, dropped


# ----------------------------------------------------------------------------- loaders


def _parse_label(value: Any, where: str) -> float:
    if isinstance(value, str):
        key = value.strip().lower()
        table = {"a": 1.0, "b": 0.0, "tie": TIE, "1": 1.0, "0": 0.0, "0.5": TIE}
        if key in table:
            return table[key]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if float(value) in (0.0, TIE, 1.0):
            return float(value)
    raise PairDataError(f"{where}: label must be A, B, tie, 1, 0 or 0.5, got {value!r}")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"preference file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PairDataError(f"{path}: not valid JSON ({err})") from err


def _resolve(root: Path, value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise PairDataError(f"{where}: expected an image path, got {value!r}")
    path = Path(value)
    return str(path if path.is_absolute() else root / path)


def load_jsonl(
    path: str, image_root: str | None = None, limit: int | None = None
) -> list[PreferencePair]:
    """Generic JSON lines: ``{"id"?, "prompt", "image_a", "image_b", "label"}`` per line."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"preference file not found: {file}")
    root = Path(image_root) if image_root else file.parent
    pairs = []
    for n, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise PairDataError(f"{where}: not valid JSON ({err})") from err
        missing = [k for k in ("prompt", "image_a", "image_b", "label") if k not in row]
        if missing:
            raise PairDataError(f"{where}: missing field(s) {missing}")
        pairs.append(
            PreferencePair(
                id=str(row.get("id", f"jsonl-{n}")),
                prompt=str(row["prompt"]),
                image_a=_resolve(root, row["image_a"], where),
                image_b=_resolve(root, row["image_b"], where),
                label=_parse_label(row["label"], where),
                source=str(row.get("source", "jsonl")),
            )
        )
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def load_hpdv3(
    path: str, image_root: str | None = None, seed: int = 0, limit: int | None = None
) -> list[PreferencePair]:
    """HPDv3 ``test.json``: ``path1`` is preferred; A/B order is shuffled with ``seed``."""
    file = Path(path)
    rows = _read_json(file)
    if not isinstance(rows, list):
        raise PairDataError(f"{file}: expected a JSON list of pairs, got {type(rows).__name__}")
    root = Path(image_root) if image_root else file.parent
    rng = random.Random(seed)
    pairs = []
    for i, row in enumerate(rows):
        where = f"{file}[{i}]"
        if not isinstance(row, dict) or any(k not in row for k in ("prompt", "path1", "path2")):
            raise PairDataError(f"{where}: expected an object with prompt, path1, path2")
        better = _resolve(root, row["path1"], where)
        worse = _resolve(root, row["path2"], where)
        meta = {"model_preferred": row.get("model1"), "model_other": row.get("model2")}
        pair = PreferencePair(f"hpdv3-{i}", str(row["prompt"]), better, worse, 1.0, "hpdv3", meta)
        pairs.append(pair.swapped() if rng.random() < 0.5 else pair)
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def parquet_files(path: str) -> list[Path]:
    """One parquet file, or the ``*.parquet`` shards of a folder in name order."""
    where = Path(path)
    if where.is_dir():
        files = sorted(where.glob("*.parquet"))
        if not files:
            raise FileNotFoundError(f"no .parquet files in folder {where}")
        return files
    if not where.is_file():
        raise FileNotFoundError(f"preference file or folder not found: {where}")
    return [where]


def load_pickapic(path: str, limit: int | None = None) -> list[PreferencePair]:
    """Pick-a-Pic v2 parquet: ``caption``, ``jpg_0``/``jpg_1`` bytes, ``label_0`` (0.5 = tie).

    ``path`` is one parquet file or a folder of shards (as the dataset is published), read in
    name order; ``limit`` counts pairs across shards.
    """
    pairs: list[PreferencePair] = []
    for file in parquet_files(path):
        pairs += _pickapic_shard(file, None if limit is None else limit - len(pairs))
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def _pickapic_shard(file: Path, limit: int | None) -> list[PreferencePair]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except (pa.ArrowInvalid, OSError) as err:
        raise PairDataError(f"{file}: not a readable parquet file ({err})") from err
    needed = {"caption", "jpg_0", "jpg_1", "label_0"}
    missing = needed - set(table.column_names)
    if missing:
        raise PairDataError(f"{file}: missing Pick-a-Pic column(s) {sorted(missing)}")
    columns = [
        c for c in ("caption", "jpg_0", "jpg_1", "label_0", "ranking_id") if c in table.column_names
    ]
    rows = table.select(columns).to_pylist()
    pairs = []
    for i, row in enumerate(rows):
        where = f"{file} row {i}"
        images = []
        for key in ("jpg_0", "jpg_1"):
            value = row[key]
            if isinstance(value, dict):  # datasets' Image feature: {"bytes": ..., "path": ...}
                value = value.get("bytes")
            if not isinstance(value, bytes):
                raise PairDataError(f"{where}: column {key} holds no image bytes")
            images.append(value)
        rid = row.get("ranking_id")
        pairs.append(
            PreferencePair(
                id=f"pickapic-{rid}" if rid is not None else f"pickapic-{file.stem}-{i}",
                prompt=str(row["caption"]),
                image_a=images[0],
                image_b=images[1],
                label=_parse_label(row["label_0"], where),
                source="pickapic",
            )
        )
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def load_mmrb2(
    path: str,
    image_root: str | None = None,
    prompts_path: str | None = None,
    limit: int | None = None,
) -> list[PreferencePair]:
    """MMRB2 text-to-image pairs; ``chosen`` "A"/"B" gives the label.

    The prompt text is read, in this order, from ``prompts_path`` (a JSON file mapping pair id ->
    prompt, for the metadata-only ``t2i_response_only.json``), from the pair's ``prompt_content``
    (``[["text", ...], ...]``, where the full release ``t2i.json`` keeps it; text parts joined by
    newlines), or from a ``prompt`` / ``prompt_metadata.prompt`` field. Image paths are relative
    to ``image_root`` (default: the JSON file's folder, as in the full release).
    """
    file = Path(path)
    data = _read_json(file)
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
        raise PairDataError(f"{file}: expected an object with a 'pairs' list")
    root = Path(image_root) if image_root else file.parent
    extra = _read_json(Path(prompts_path)) if prompts_path else {}
    pairs = []
    for i, row in enumerate(data["pairs"]):
        where = f"{file} pairs[{i}]"
        try:
            pid = str(row["id"])
            files = [row[k]["response_content"][0][1] for k in ("response_a", "response_b")]
            chosen = row["chosen"]
        except (KeyError, IndexError, TypeError) as err:
            raise PairDataError(f"{where}: missing MMRB2 field ({err})") from err
        prompt = extra.get(pid) or _mmrb2_prompt(row)
        if not prompt:
            raise PairDataError(
                f"{where}: pair {pid} has no prompt text (no prompt_content); use the full "
                "release t2i.json or pass prompts_path= a JSON file mapping pair id -> prompt"
            )
        pairs.append(
            PreferencePair(
                id=pid,
                prompt=str(prompt),
                image_a=_resolve(root, files[0], where),
                image_b=_resolve(root, files[1], where),
                label=_parse_label(chosen, where),
                source=str(row.get("prompt_source", "mmrb2")),
            )
        )
        if limit is not None and len(pairs) >= limit:
            break
    return pairs


def _mmrb2_prompt(row: dict) -> str | None:
    """The prompt text of an MMRB2 pair: its ``prompt_content`` text parts, else a plain field."""
    parts = row.get("prompt_content") or []
    texts = [p[1] for p in parts if isinstance(p, list) and len(p) == 2 and p[0] == "text"]
    if texts:
        return "\n".join(str(t) for t in texts)
    return row.get("prompt") or (row.get("prompt_metadata") or {}).get("prompt")


# ----------------------------------------------------------------------------- splits


@dataclass
class Splits:
    train: list[PreferencePair]
    val: list[PreferencePair]
    test: list[PreferencePair]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def split_pairs(pairs: Sequence[PreferencePair], train: float, val: float, seed: int) -> Splits:
    """Seeded train/validation/test split (test = the rest) by prompt, so that no prompt's
    pairs sit on both sides of a split."""
    if not 0 < train <= 1 or not 0 <= val < 1 or train + val > 1 + 1e-9:
        raise ValueError(f"split fractions train={train}, val={val} must be in (0, 1], sum <= 1")
    prompts = sorted({p.prompt for p in pairs})
    order = np.random.default_rng(seed).permutation(len(prompts))
    rank = {prompts[j]: i for i, j in enumerate(order)}
    ordered = sorted(pairs, key=lambda p: (rank[p.prompt], p.id))
    n_train, n_val = round(train * len(ordered)), round(val * len(ordered))

    # Move each cut forward to a prompt boundary.
    def boundary(cut: int) -> int:
        while 0 < cut < len(ordered) and ordered[cut].prompt == ordered[cut - 1].prompt:
            cut += 1
        return cut

    a = boundary(n_train)
    b = boundary(max(a, n_train + n_val))
    return Splits(list(ordered[:a]), list(ordered[a:b]), list(ordered[b:]))


def drop_ties(pairs: Sequence[PreferencePair], what: str) -> list[PreferencePair]:
    """The pairs with a preferred image; all-tied input fails with one clear message."""
    decided = [p for p in pairs if not p.is_tie]
    if pairs and not decided:
        raise PairDataError(
            f"all {len(pairs)} {what} pairs are ties (label 0.5); rubric learning needs pairs "
            "where one image is preferred"
        )
    return decided
