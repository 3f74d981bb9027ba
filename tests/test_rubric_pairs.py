"""Preference-pair loaders on fixtures in each benchmark's own format, image checks, splits."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rubric_learning.pairs import (
    PairDataError,
    drop_ties,
    drop_unreadable,
    load_hpdv3,
    load_jsonl,
    load_mmrb2,
    load_pickapic,
    open_image,
    split_pairs,
)


def png_bytes(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_dir(tmp_path):
    for i, colour in enumerate(["red", "green", "blue", "white"]):
        (tmp_path / f"im{i}.png").write_bytes(png_bytes(colour))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return tmp_path


def test_jsonl_labels_paths_and_errors(image_dir):
    rows = [
        {
            "id": "p1",
            "prompt": "a red cat",
            "image_a": "im0.png",
            "image_b": "im1.png",
            "label": "A",
        },
        {"prompt": "a dog", "image_a": "im2.png", "image_b": "im3.png", "label": 0},
        {"prompt": "a tie", "image_a": "im0.png", "image_b": "im3.png", "label": "tie"},
    ]
    path = image_dir / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs = load_jsonl(str(path))
    assert [p.label for p in pairs] == [1.0, 0.0, 0.5]
    assert pairs[0].id == "p1" and pairs[1].id == "jsonl-2"
    assert open_image(pairs[0].image_a).getpixel((0, 0)) == (255, 0, 0)
    path.write_text(json.dumps({**rows[0], "label": "maybe"}) + "\n")
    with pytest.raises(PairDataError, match=r"pairs.jsonl:1: label must be"):
        load_jsonl(str(path))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_jsonl(str(image_dir / "nope.jsonl"))


def test_hpdv3_path1_preferred_and_shuffled(image_dir):
    rows = [
        {
            "prompt": f"p{i}",
            "path1": f"im{i % 4}.png",
            "path2": f"im{(i + 1) % 4}.png",
            "model1": "m1",
            "model2": "m2",
        }
        for i in range(40)
    ]
    (image_dir / "test.json").write_text(json.dumps(rows))
    pairs = load_hpdv3(str(image_dir / "test.json"), seed=3)
    assert 5 < sum(p.label for p in pairs) < 35  # A/B shuffled, not all A
    for row, pair in zip(rows, pairs):
        preferred = pair.image_a if pair.label == 1.0 else pair.image_b
        assert preferred.endswith(row["path1"])
    assert [p.label for p in load_hpdv3(str(image_dir / "test.json"), seed=3)] == [
        p.label for p in pairs
    ]


def test_pickapic_parquet_bytes_and_ties(tmp_path):
    table = pa.table(
        {
            "caption": ["a", "b", "c"],
            "jpg_0": [png_bytes("red"), png_bytes("green"), png_bytes("blue")],
            "jpg_1": [png_bytes("white"), png_bytes("black"), png_bytes("gray")],
            "label_0": [1.0, 0.0, 0.5],
            "ranking_id": [10, 11, 12],
        }
    )
    pq.write_table(table, tmp_path / "test.parquet")
    pairs = load_pickapic(str(tmp_path / "test.parquet"))
    assert [p.label for p in pairs] == [1.0, 0.0, 0.5]
    assert pairs[2].is_tie and pairs[0].id == "pickapic-10"
    assert open_image(pairs[1].image_b).getpixel((0, 0)) == (0, 0, 0)
    assert len(drop_ties(pairs, "train")) == 2
    with pytest.raises(PairDataError, match="all 1 train pairs are ties"):
        drop_ties(pairs[2:], "train")
    pq.write_table(table.drop(["label_0"]), tmp_path / "bad.parquet")
    with pytest.raises(PairDataError, match="label_0"):
        load_pickapic(str(tmp_path / "bad.parquet"))
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(PairDataError, match="broken.parquet: not a readable parquet file"):
        load_pickapic(str(tmp_path / "broken.parquet"))


def test_pickapic_folder_of_shards_in_name_order(tmp_path):
    shards = tmp_path / "test"
    shards.mkdir()
    for n, captions in enumerate((["a", "b"], ["c", "d", "e"])):
        table = pa.table(
            {
                "caption": captions,
                "jpg_0": [png_bytes("red")] * len(captions),
                "jpg_1": [png_bytes("blue")] * len(captions),
                "label_0": [1.0] * len(captions),
            }
        )
        pq.write_table(table, shards / f"test-0000{n}-of-00002.parquet")
    pairs = load_pickapic(str(shards))
    assert [p.prompt for p in pairs] == ["a", "b", "c", "d", "e"]
    assert len({p.id for p in pairs}) == 5  # no ranking_id: ids still unique across shards
    assert [p.prompt for p in load_pickapic(str(shards), limit=3)] == ["a", "b", "c"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .parquet files in folder"):
        load_pickapic(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="not found: .*missing.parquet"):
        load_pickapic(str(tmp_path / "missing.parquet"))


def test_mmrb2_chosen_and_prompt_sources(image_dir):
    def entry(pid, chosen, **extra):
        return {
            "id": pid,
            "response_a": {"model_name": "x", "response_content": [["image", "im0.png"]]},
            "response_b": {"model_name": "y", "response_content": [["image", "im1.png"]]},
            "chosen": chosen,
            "prompt_source": "evalmuse",
            **extra,
        }

    data = {"pairs": [entry("a1", "A", prompt="a fox"), entry("b2", "B")]}
    full = {  # the full release keeps the prompt as text parts in prompt_content
        "pairs": [entry("c3", "B", prompt_content=[["text", "a red kite"], ["text", "at dusk"]])]
    }
    (image_dir / "t2i_full.json").write_text(json.dumps(full))
    [kite] = load_mmrb2(str(image_dir / "t2i_full.json"))
    assert (kite.prompt, kite.label) == ("a red kite\nat dusk", 0.0)
    (image_dir / "t2i.json").write_text(json.dumps(data))
    (image_dir / "prompts.json").write_text(json.dumps({"b2": "a hen"}))
    pairs = load_mmrb2(str(image_dir / "t2i.json"), prompts_path=str(image_dir / "prompts.json"))
    assert [(p.prompt, p.label, p.source) for p in pairs] == [
        ("a fox", 1.0, "evalmuse"),
        ("a hen", 0.0, "evalmuse"),
    ]
    with pytest.raises(PairDataError, match="pair b2 has no prompt text"):
        load_mmrb2(str(image_dir / "t2i.json"))


def test_unreadable_images_are_skipped_and_counted(image_dir, caplog):
    rows = [
        {"prompt": "ok", "image_a": "im0.png", "image_b": "im1.png", "label": 1},
        {"prompt": "corrupt", "image_a": "broken.png", "image_b": "im1.png", "label": 1},
        {"prompt": "missing", "image_a": "im0.png", "image_b": "gone.png", "label": 0},
    ]
    (image_dir / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    kept, dropped = drop_unreadable(load_jsonl(str(image_dir / "p.jsonl")))
    assert [p.prompt for p in kept] == ["ok"]
    assert dropped == {"corrupt image": 1, "missing image": 1}
    assert "broken.png" in caplog.text and "gone.png" in caplog.text


def test_splits_are_seeded_and_keep_prompts_together(image_dir):
    rows = [
        {"prompt": f"prompt {i % 30}", "image_a": "im0.png", "image_b": "im1.png", "label": 1}
        for i in range(90)
    ]
    (image_dir / "s.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pairs = load_jsonl(str(image_dir / "s.jsonl"))
    a, b = split_pairs(pairs, 0.6, 0.2, seed=1), split_pairs(pairs, 0.6, 0.2, seed=1)
    assert [p.id for p in a.train] == [p.id for p in b.train]
    assert a.sizes() == {"train": 54, "val": 18, "test": 18}
    prompts = [{p.prompt for p in part} for part in (a.train, a.val, a.test)]
    assert not (prompts[0] & prompts[1]) and not (prompts[0] & prompts[2])
    other = split_pairs(pairs, 0.6, 0.2, seed=2)
    assert [p.id for p in other.train] != [p.id for p in a.train]
    assert np.isclose(sum(a.sizes().values()), len(pairs))
