"""HPSv3 on a tiny random Qwen2-VL with a locally built tokenizer: a checkpoint in the official
key layout loads, the score is the head's first output at the <|Reward|> token (recomputed here
step by step, head in float64), batching with padding does not change scores, and bad inputs
fail clearly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

import rewards.scalar
from rewards.judges.tiny_vlm import (
    QWEN_CHAT_TEMPLATE,
    QWEN_SPECIAL_TOKENS,
    SIZES,
    build_image_processor,
    build_qwen_tokenizer,
)
from rewards.judges.transformers_judge import build_processor
from rewards.scalar.hpsv3 import REWARD_TOKEN, HPSv3Reward, reward_head

PROMPTS = ["a red apple on a table", "two dogs", "a cat sitting on a sofa in the morning"]


def _tiny_qwen2_vl(vocab_size: int, tokenizer) -> Qwen2VLForConditionalGeneration:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            pad_token_id=ids["<|endoftext|>"],
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            tie_word_embeddings=False,
            initializer_range=0.2,
        ),
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=64,
            num_heads=2,
            mlp_ratio=2,
            patch_size=8,
            spatial_merge_size=2,
            temporal_patch_size=2,
            initializer_range=0.2,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    return Qwen2VLForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def hpsv3_files(tmp_path_factory):
    """(base folder, official-layout checkpoint, the model, the head) built with seed 0."""
    torch.manual_seed(0)
    tokenizer = build_qwen_tokenizer()
    # One spare embedding row: the checkpoint's vocabulary includes the added <|Reward|> token.
    model = _tiny_qwen2_vl(len(tokenizer) + 1, tokenizer)
    head = reward_head(64).eval()
    processor = build_processor(
        Qwen2VLProcessor, build_image_processor("qwen2_5_vl", SIZES["tiny"]), tokenizer,
        QWEN_CHAT_TEMPLATE,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny_qwen2_vl")
    base = folder / "base"  # the Qwen2-VL-Instruct folder: config + processor, no weights needed
    model.config.save_pretrained(base)
    processor.save_pretrained(base)
    config_file = base / "processor_config.json"
    processor_config = json.loads(config_file.read_text())
    processor_config["processor_class"] = "Qwen2VLProcessor"  # the image-only stand-in's real class
    config_file.write_text(json.dumps(processor_config))
    official = {}
    for key, value in model.state_dict().items():
        key = key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        official[key] = value.clone()
    official |= {f"rm_head.{k}": v.clone() for k, v in head.state_dict().items()}
    checkpoint = folder / "HPSv3.safetensors"
    save_file(official, str(checkpoint))
    return base, checkpoint, model, head


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def _reference(reward: HPSv3Reward, model, head, image, prompt) -> float:
    """One conversation, recomputed from the original modules: embeddings with the vision
    features written into the image slots, the decoder with its default (sequential) positions,
    then the head in float64 at the reward token."""
    enc = reward.inputs([image], [prompt])
    ids = enc["input_ids"]
    embeds = model.model.language_model.embed_tokens(ids)
    vision = model.model.visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"])
    vision = getattr(vision, "pooler_output", vision)
    slots = ids[0] == model.config.image_token_id
    embeds[0, slots] = vision
    hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state[0]
    at = (ids[0] == reward.processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)).nonzero()
    return float(head.double()(hidden[at[0, 0]].double())[0])


def test_score_matches_reference_and_is_batch_invariant(hpsv3_files):
    base, checkpoint, model, head = hpsv3_files
    images = _images(3)
    batched = HPSv3Reward(
        path=str(base), checkpoint=str(checkpoint), dtype="float32", batch_size=3, pixels=32 * 32
    )
    out = batched(images, PROMPTS)
    assert out.num_failed == 0 and out.details["log_sigma"].shape == (3,)
    with torch.no_grad():
        ref = [_reference(batched, model, head, im, p) for im, p in zip(images, PROMPTS)]
    torch.testing.assert_close(out.scores.double(), torch.tensor(ref, dtype=torch.float64),
                               atol=1e-4, rtol=1e-4)  # fmt: skip
    single = HPSv3Reward(
        path=str(base), checkpoint=str(checkpoint), dtype="float32", batch_size=1, pixels=32 * 32
    )
    torch.testing.assert_close(single(images, PROMPTS).scores, out.scores, atol=1e-4, rtol=1e-4)
    assert len(set(out.scores.tolist())) == 3  # the random model does tell inputs apart


def test_bad_files_fail_clearly(hpsv3_files, tmp_path):
    base, checkpoint, _, _ = hpsv3_files
    with pytest.raises(FileNotFoundError, match="hpsv3 checkpoint.*nope.safetensors"):
        HPSv3Reward(path=str(base), checkpoint=str(tmp_path / "nope.safetensors"))
    with pytest.raises(FileNotFoundError, match="Qwen2-VL base folder.*lacks config.json"):
        HPSv3Reward(path=str(tmp_path), checkpoint=str(checkpoint))
    with pytest.raises(ValueError, match="Reward"):
        HPSv3Reward(path=str(base), checkpoint=str(checkpoint), prompt_template="{prompt}")
    headless = tmp_path / "headless.safetensors"
    from safetensors.torch import load_file

    save_file(
        {k: v for k, v in load_file(str(checkpoint)).items() if "rm_head" not in k}, str(headless)
    )
    reward = HPSv3Reward(path=str(base), checkpoint=str(headless), dtype="float32")
    with pytest.raises(KeyError, match="rm_head"):
        reward(_images(1), PROMPTS[:1])


def test_images_are_resized_to_the_pixel_budget(hpsv3_files):
    base, checkpoint, _, _ = hpsv3_files
    reward = HPSv3Reward(path=str(base), checkpoint=str(checkpoint), dtype="float32", pixels=1024)
    reward._ensure_loaded()
    big = Image.fromarray(np.zeros((96, 64, 3), dtype=np.uint8))
    grid = reward.inputs([big], ["a photo"])["image_grid_thw"]
    assert int(grid[0, 1] * grid[0, 2]) * 64 <= 1024 * 1.5  # ~32x32 px of 8 px patches


def test_sends_the_official_instruction_verbatim_on_the_pil_backend(hpsv3_files):
    """The default prompt is HPSv3's INSTRUCTION (prompt filled in as ``.format`` does) followed by
    its reward-token suffix, both read from the stored files; images go through the PIL backend."""
    from transformers.image_processing_backends import PilBackend

    base, checkpoint, _, _ = hpsv3_files
    reward = HPSv3Reward(path=str(base), checkpoint=str(checkpoint), dtype="float32", pixels=1024)
    reward._ensure_loaded()
    assert isinstance(reward.processor.image_processor, PilBackend)
    texts = Path(rewards.scalar.__file__).parent / "texts"
    instruction = (texts / "hpsv3_instruction.txt").read_text(encoding="utf-8")
    suffix = (texts / "hpsv3_reward_suffix.txt").read_text(encoding="utf-8")
    prompt = "a cat with {braces} and 'quotes'"
    official = instruction.format(text_prompt=prompt) + suffix
    ids = reward.inputs(_images(1), [prompt])["input_ids"][0]
    sent = reward.processor.tokenizer.decode(ids)
    assert sent.endswith(official + "<|im_end|>\n<|im_start|>assistant\n")
    assert sent.count(REWARD_TOKEN) == 1 and "Textual prompt - " + prompt in sent
