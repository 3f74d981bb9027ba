"""The local judge's host-side hot path and safe modes: device preprocessing equal to the PIL
processor, M-RoPE positions equal to the model's, work done once per image / rubric set, tensor
inputs, prefetching, the kv_cache memory guard and the attention checks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewards.images import to_pil
from rewards.judges import prefix_scoring, transformers_judge
from rewards.judges.base import JudgeItem
from rewards.judges.image_prep import DeviceImageProcessor, pil_resize
from rewards.judges.prefix_scoring import (
    ChatPrompt,
    cache_argument,
    kv_cache_bytes,
    repeated_cache,
)
from rewards.judges.tiny_vlm import SIZES, build_image_processor, build_tiny_vlm
from rewards.judges.transformers_judge import TransformersJudge
from rewards.rubric import RubricReward
from rewards.rubric_set import Rubric, RubricSet

QUESTIONS = [
    "Is the sky blue?",
    "Is there a dog?",
    "Are the colours vivid and the lighting natural?",
]


@pytest.fixture(scope="module")
def qwen3():
    return build_tiny_vlm("qwen3_vl", seed=0)


def noise(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def items_for(images, questions=QUESTIONS) -> list[JudgeItem]:
    return [JudgeItem(im, f"A photo {i}.", q) for i, im in enumerate(images) for q in questions]


# ---------------------------------------------------------------- device preprocessing
@pytest.mark.parametrize(
    ("arch", "size"), [("qwen3_vl", "tiny"), ("qwen2_5_vl", "small"), ("qwen3_vl", "small")]
)
def test_device_preprocessing_equals_the_pil_processor(arch, size):
    processor = build_image_processor(arch, SIZES[size])
    device = DeviceImageProcessor(processor)
    # kept as is, upscaled, downscaled on one axis, both axes by one scale, both by two scales
    shapes = [(64, 64), (37, 91), (200, 13), (90, 90), (61, 61), (100, 300), (512, 512)]
    arrays = [noise(k, h, w) for k, (h, w) in enumerate(shapes)]
    want = processor(images=[Image.fromarray(a) for a in arrays], return_tensors="pt")
    pixels, grids = device([torch.from_numpy(a).permute(2, 0, 1) for a in arrays])
    assert torch.equal(grids, want["image_grid_thw"])
    assert pixels.dtype == want["pixel_values"].dtype == torch.float32
    assert torch.equal(pixels, want["pixel_values"])  # bit for bit


@pytest.mark.parametrize("resample", [Image.BILINEAR, Image.BICUBIC, Image.LANCZOS])
def test_pil_resize_on_tensors_equals_pillow(resample):
    sizes = [(50, 70, 33, 70), (50, 70, 50, 91), (17, 300, 17, 64), (512, 512, 504, 504)]
    for k, (h, w, out_h, out_w) in enumerate(sizes):
        array = noise(k, h, w)
        want = np.asarray(Image.fromarray(array).resize((out_w, out_h), resample=resample))
        got = pil_resize(torch.from_numpy(array).permute(2, 0, 1)[None], out_h, out_w, resample)
        assert np.array_equal(got[0].permute(1, 2, 0).numpy(), want), (h, w, out_h, out_w)


def test_prefix_ids_equal_the_processors_tokenization(qwen3):
    _, processor = qwen3
    prompt = ChatPrompt(processor)
    images = [Image.fromarray(noise(0, 32, 32)), Image.fromarray(noise(1, 64, 48))]
    contexts = ["A photo of a cat.\n", ""]
    grids = processor.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
    ours = prompt.prefix_ids(contexts, (grids.prod(1) // 4).tolist())
    for image, context, ids in zip(images, contexts, ours):
        text = prompt.prefix_text(context)
        assert processor(images=[image], text=[text])["input_ids"][0] == ids


def test_left_padding_equals_the_tokenizers(qwen3):
    _, processor = qwen3
    tokenizer = processor.tokenizer
    rows = [[5, 6, 7], [], [8], [9, 10, 11, 12, 13], [14, 15]]
    ids, mask = prefix_scoring._left_pad(rows, tokenizer.pad_token_id)
    want = tokenizer.pad({"input_ids": rows}, padding_side="left", return_tensors="pt")
    assert torch.equal(ids, want["input_ids"]) and torch.equal(mask, want["attention_mask"])


# ---------------------------------------------------------------- M-RoPE positions
@pytest.mark.parametrize("arch", ["qwen3_vl", "qwen2_5_vl"])
def test_host_mrope_positions_equal_the_models_get_rope_index(arch):
    model, processor = build_tiny_vlm(arch, seed=0)
    judge = TransformersJudge(model=model, processor=processor, progress=False)
    images = [noise(0, 32, 32), noise(1, 64, 32), noise(2, 32, 96), noise(3, 48, 48)]
    contexts = ["A photo.", "", "A watercolour landscape with a lake and two people.", "x"]
    groups = transformers_judge.group_items(
        [JudgeItem(torch.from_numpy(a).permute(2, 0, 1), c, "q") for a, c in zip(images, contexts)]
    )
    prefix = judge.scorer._prefix(groups)
    want, _ = model.model.get_rope_index(
        prefix["input_ids"],
        mm_token_type_ids=prefix["mm_token_type_ids"],
        image_grid_thw=prefix["image_grid_thw"],
        attention_mask=prefix["attention_mask"],
    )
    valid = prefix["attention_mask"].bool()
    assert torch.equal(prefix["position_ids"][:, valid], want[:, valid])
    assert torch.equal(prefix["position_ids"][:, ~valid], torch.zeros_like(want[:, ~valid]))
    next_want = want.masked_fill(~valid[None], -1).amax(dim=(0, 2)) + 1
    assert torch.equal(prefix["next_position"], next_want)
    # not trivially equal: rows differ in padding and image shape
    assert len(set(valid.sum(1).tolist())) > 1


# ---------------------------------------------------------------- work done once
def test_each_image_converted_once_and_each_question_tokenized_once(qwen3, monkeypatch):
    model, processor = qwen3
    judge = TransformersJudge(model=model, processor=processor, batch_size=2, progress=False)
    conversions, tokenized = [], []
    original_convert = transformers_judge.to_uint8_chw
    original_suffix = ChatPrompt.suffix_text

    def counting_convert(image):
        conversions.append(image)
        return original_convert(image)

    def counting_suffix(self, question):
        tokenized.append(question)
        return original_suffix(self, question)

    monkeypatch.setattr(transformers_judge, "to_uint8_chw", counting_convert)
    monkeypatch.setattr(ChatPrompt, "suffix_text", counting_suffix)
    images = [Image.fromarray(noise(k, 32, 32)) for k in range(3)]
    for _ in range(2):  # two reward calls with one rubric set
        judge.yes_prob(items_for(images))
    assert len(conversions) == 2 * len(images)  # once per image per call, not per question
    assert sorted(tokenized) == sorted(QUESTIONS)  # once per question over both calls
    assert len(judge.scorer._layouts) == 1  # one packed layout for the rubric set


def test_equal_images_share_a_prefix_and_a_fingerprint_collision_is_checked(qwen3, monkeypatch):
    a, b = noise(0, 32, 32), noise(1, 32, 32)
    items = [
        JudgeItem(Image.fromarray(a), "c", "q1"),
        JudgeItem(torch.from_numpy(a.copy()).permute(2, 0, 1), "c", "q2"),  # same pixels
        JudgeItem(Image.fromarray(b), "c", "q3"),
    ]
    assert [g.item_indices for g in transformers_judge.group_items(items)] == [[0, 1], [2]]
    # Every image hashing alike must not merge different pixels: equality decides.
    monkeypatch.setattr(transformers_judge.hashlib, "blake2b", lambda *a, **k: _Same())
    assert [g.item_indices for g in transformers_judge.group_items(items)] == [[0, 1], [2]]


class _Same:
    def digest(self) -> bytes:
        return b"same"


def test_packed_forward_returns_only_the_answer_rows_and_no_cache(qwen3):
    """Packed mode projects only each question's last token to logits (images with different
    rubric sets in one chunk, so the rows read different columns), keeps no cache, and scores as
    one forward per question does."""
    model, processor = qwen3
    images = [Image.fromarray(noise(k, 32, 32 + 16 * k)) for k in range(3)]
    items = [
        JudgeItem(image, f"A photo {k}.", q)
        for k, image in enumerate(images)
        for q in (QUESTIONS[k:] if k != 1 else QUESTIONS[::-1])
    ]
    packed = TransformersJudge(model=model, processor=processor, progress=False)
    decoded, projected = [], []
    hooks = [
        model.model.register_forward_hook(lambda _, __, out: decoded.append(out)),
        model.get_output_embeddings().register_forward_hook(
            lambda _, args, __: projected.append(args[0])
        ),
    ]
    try:
        probs = packed.yes_prob(items).probs
    finally:
        for hook in hooks:
            hook.remove()
    hidden_size = model.config.get_text_config().hidden_size
    assert [tuple(rows.shape) for rows in projected] == [(len(items), hidden_size)]
    assert len(decoded) == 1 and getattr(decoded[0], cache_argument(model)) is None
    naive = TransformersJudge(model=model, processor=processor, shared_prefix="none")
    want = naive.yes_prob(items).probs
    torch.testing.assert_close(probs, want, atol=1e-5, rtol=0)
    assert want.max() - want.min() > 0.01


# ---------------------------------------------------------------- tensor input and prefetch
@pytest.mark.parametrize("mode", ["none", "kv_cache", "packed"])
def test_tensor_images_score_exactly_like_their_pil_images(qwen3, mode):
    model, processor = qwen3
    judge = TransformersJudge(
        model=model, processor=processor, shared_prefix=mode, batch_size=2, progress=False
    )
    floats = torch.rand(3, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    from_pil = judge.yes_prob(items_for(to_pil(floats))).probs
    from_floats = judge.yes_prob(items_for(list(floats))).probs
    uint8 = (floats * 255).round().to(torch.uint8)
    from_uint8 = judge.yes_prob(items_for(list(uint8))).probs
    assert torch.equal(from_floats, from_pil) and torch.equal(from_uint8, from_pil)
    processor_path = TransformersJudge(
        model=model,
        processor=processor,
        shared_prefix=mode,
        batch_size=2,
        image_preprocessing="processor",
    )
    assert torch.equal(processor_path.yes_prob(items_for(list(floats))).probs, from_pil)
    assert from_pil.max() - from_pil.min() > 0.01


def test_prefetching_the_next_chunk_gives_identical_scores(qwen3):
    model, processor = qwen3
    images = [Image.fromarray(noise(k, 32, 32 + 16 * (k % 2))) for k in range(5)]
    items = items_for(images)
    scores = {}
    for prefetch in (False, True):
        judge = TransformersJudge(
            model=model, processor=processor, batch_size=1, prefetch=prefetch, progress=False
        )
        scores[prefetch] = judge.yes_prob(items).probs
    assert torch.equal(scores[True], scores[False])
    assert torch.isfinite(scores[True]).all()


def test_rubric_reward_hands_tensor_batches_to_the_judge(qwen3):
    model, processor = qwen3
    judge = TransformersJudge(model=model, processor=processor, progress=False)
    rubrics = RubricSet([Rubric(f"r{k}", text, 1.0) for k, text in enumerate(QUESTIONS)])
    reward = RubricReward(rubrics, judge)
    assert reward.accepts_tensors
    seen = []
    original = judge.yes_prob

    def spy(items):
        seen.extend(type(item.image) for item in items)
        return original(items)

    judge.yes_prob = spy
    batch = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    batch[1, 0, 0, 0] = float("nan")
    out = reward(batch, ["a", "b", "c"])
    assert set(seen) == {torch.Tensor}
    assert out.failures == {"corrupt image: non-finite pixel values": 1}
    assert torch.isnan(out.scores[1]) and torch.isfinite(out.scores[[0, 2]]).all()
    pil_images = to_pil(batch[[0, 2]])
    want = RubricReward(rubrics, judge)(pil_images, ["a", "c"])
    assert torch.equal(out.scores[[0, 2]], want.scores)


# ---------------------------------------------------------------- safe modes
def test_kv_cache_estimate_is_the_size_of_the_real_cache(qwen3):
    model, processor = qwen3
    judge = TransformersJudge(model=model, processor=processor, shared_prefix="kv_cache")
    groups = transformers_judge.group_items(
        items_for([Image.fromarray(noise(k, 32, 32)) for k in range(2)])
    )
    prepared = judge.scorer.prepare("kv_cache", groups)
    inputs = {k: v for k, v in prepared.inputs.items() if k != "next_position"}
    with torch.no_grad():
        out = model(**inputs, use_cache=True, logits_to_keep=1)
    prefix_cache = getattr(out, cache_argument(model))
    room = prepared.extra["input_ids"].shape[1]
    copies = repeated_cache(prefix_cache, prepared.extra["rows"], model.config, room=room)
    real = sum(k.nbytes + v.nbytes for k, v, *_ in prefix_cache) + sum(
        layer._key_buffer.nbytes + layer._value_buffer.nbytes for layer in copies.layers
    )
    prefix_len = prepared.inputs["input_ids"].shape[1]
    assert kv_cache_bytes(model, prefix_len, len(groups), 2 * len(QUESTIONS), room) == real


def test_repeated_cache_writes_the_questions_into_its_room(qwen3):
    """The per-question copies are gathered once into buffers with room for the questions, which
    the next update fills in place; the keys then equal the concatenation a plain cache makes."""
    model, _ = qwen3
    generator = torch.Generator().manual_seed(0)
    prefix = [(torch.randn(2, 2, 5, 4, generator=generator),) * 2 for _ in range(2)]
    rows = torch.tensor([0, 0, 1, 1, 1])
    plain = repeated_cache(prefix, rows, model.config)
    roomy = repeated_cache(prefix, rows, model.config, room=3)
    new = torch.randn(5, 2, 3, 4, generator=generator)
    start = roomy.layers[0].keys.data_ptr()
    keys, values = roomy.update(new, new, 0)
    assert torch.equal(keys, torch.cat([prefix[0][0][rows], new], dim=2)) and keys.is_contiguous()
    assert keys.data_ptr() == start  # written in place: no copy of the gathered rows
    assert torch.equal(keys, plain.update(new, new, 0)[0])
    more = torch.randn(5, 2, 1, 4, generator=generator)  # past the room: concatenated
    assert torch.equal(roomy.update(more, more, 0)[0], torch.cat([keys, more], dim=2))


def test_kv_cache_over_its_memory_falls_back_to_packed_or_refuses(qwen3, caplog):
    model, processor = qwen3
    items = items_for([Image.fromarray(noise(k, 32, 32)) for k in range(2)])
    packed = TransformersJudge(model=model, processor=processor, shared_prefix="packed")
    small = dict(model=model, processor=processor, shared_prefix="kv_cache")
    with caplog.at_level(logging.WARNING, logger=prefix_scoring.__name__):
        fallback = TransformersJudge(**small, kv_cache_memory_gb=1e-6).yes_prob(items)
    assert "scoring these 2 images in mode packed" in caplog.text
    assert "GB of prefix cache" in caplog.text
    assert torch.equal(fallback.probs, packed.yes_prob(items).probs)
    with pytest.raises(MemoryError, match=r"kv_cache would hold .* GB .* 6 questions"):
        TransformersJudge(**small, kv_cache_memory_gb=1e-6, kv_cache_fallback="raise").yes_prob(
            items
        )
    roomy = TransformersJudge(**small, kv_cache_memory_gb=1.0).yes_prob(items)
    torch.testing.assert_close(roomy.probs, fallback.probs, atol=1e-5, rtol=0)


def test_packed_mode_refuses_flash_attention_for_the_text_model(monkeypatch):
    model, processor = build_tiny_vlm("qwen3_vl", seed=0)
    monkeypatch.setattr(
        model.config.text_config, "_attn_implementation_internal", "flash_attention_2"
    )
    with pytest.raises(ValueError, match="4D block attention mask.*'flash_attention_2'"):
        TransformersJudge(model=model, processor=processor, shared_prefix="packed")
    judge = TransformersJudge(model=model, processor=processor, shared_prefix="kv_cache")
    assert judge.shared_prefix == "kv_cache"  # kv_cache passes a 2D mask: allowed


def test_text_and_vision_attention_are_set_each_explicitly(tmp_path: Path):
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0, save_dir=tmp_path / "vlm")
    judge = TransformersJudge(
        model_path=str(tmp_path / "vlm"),
        attn_implementation="eager",
        vision_attn_implementation="sdpa",
    )
    config = judge.model.config
    assert config.text_config._attn_implementation == "eager"
    assert config.vision_config._attn_implementation == "sdpa"
    reference = TransformersJudge(model=model, processor=processor, attn_implementation="sdpa")
    assert reference.model.config.vision_config._attn_implementation == "sdpa"
    items = items_for([Image.fromarray(noise(k, 32, 32)) for k in range(2)])
    torch.testing.assert_close(
        judge.yes_prob(items).probs, reference.yes_prob(items).probs, atol=1e-5, rtol=0
    )
