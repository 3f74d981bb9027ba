"""The local transformers judge on tiny random Qwen3-VL / Qwen2.5-VL models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from transformers import AutoModelForImageTextToText
from transformers.utils import is_torchvision_available

from rewards.judges import prefix_scoring
from rewards.judges.base import JudgeItem
from rewards.judges.prefix_scoring import ChatPrompt
from rewards.judges.tiny_vlm import QWEN_SPECIAL_TOKENS, build_tiny_vlm
from rewards.judges.transformers_judge import (
    TransformersJudge,
    group_items,
    load_processor,
    yes_no_token_ids,
)

ARCHS = ["qwen3_vl", "qwen2_5_vl"]
CONF = Path(__file__).resolve().parents[1] / "conf" / "judge"


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request):
    model, processor = build_tiny_vlm(request.param, seed=0)
    return request.param, model, processor


def noise_image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


QUESTIONS = [
    "Is the sky blue?",
    "\nYes?",
    "Is there a dog on the left of the red car, and is it looking at the camera?",
    "Does the image follow the prompt, and is it sharp, well composed and free of artefacts?",
]


def mixed_items() -> list[JudgeItem]:
    """3 images of different sizes (one with an empty context) x 4 questions, interleaved."""
    images = [noise_image(0, 32, 32), noise_image(1, 64, 48), noise_image(2, 32, 64)]
    contexts = ["A photo of a cat on a sofa.\n", "", "  A watercolour landscape with a lake."]
    items = [JudgeItem(images[i], contexts[i], q) for q in QUESTIONS for i in range(len(images))]
    rng = np.random.default_rng(3)
    return [items[k] for k in rng.permutation(len(items))]


def reference_logits(model, processor, item: JudgeItem) -> torch.Tensor:
    """One unpadded forward over the full chat prompt, with the model's own M-RoPE positions."""
    messages = [ChatPrompt.user_turn(item.context, item.question, [item.image])]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    enc = processor(images=[item.image], text=[text], return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits[0, -1].double()


def test_tiny_vlm_tokenizer_and_config(tiny):
    _, model, processor = tiny
    tok = processor.tokenizer
    for special in QWEN_SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id
        assert tok.tokenize(special) == [special]
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    yes, no = yes_no_token_ids(tok)
    assert len(yes) >= 4 and len(no) >= 3 and not set(yes) & set(no)
    assert {tok.decode([i]).strip().lower() for i in yes} == {"yes"}
    # A 32 px image is a handful of tokens: 4x4 patches of 8 px, merged 2x2.
    enc = processor(images=[noise_image(0, 32, 32)], text=["<|image_pad|>"], return_tensors="pt")
    assert (enc["input_ids"] == model.config.image_token_id).sum() == 4


def test_split_prompt_tokenizes_like_the_whole_prompt(tiny):
    _, _, processor = tiny
    prompt = ChatPrompt(processor)
    for item in mixed_items():
        messages = [ChatPrompt.user_turn(item.context, item.question, [item.image])]
        rendered = processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        assert prompt.full_text(item.context, item.question) == rendered
        whole = processor(images=[item.image], text=[rendered])["input_ids"][0]
        head = processor(images=[item.image], text=[prompt.prefix_text(item.context)])
        assert list(whole) == list(head["input_ids"][0]) + prompt.suffix_ids(item.question)


@pytest.fixture(scope="module")
def reference(tiny):
    """Reference next-token log-probs (float64) of mixed_items(), one forward each."""
    _, model, processor = tiny
    items = mixed_items()
    logits = torch.stack([reference_logits(model, processor, it) for it in items])
    return items, logits.log_softmax(-1)


def expected_yes_prob(log_probs: torch.Tensor, judge: TransformersJudge) -> torch.Tensor:
    log_yes = log_probs[:, judge.yes_ids].logsumexp(-1)
    log_no = log_probs[:, judge.no_ids].logsumexp(-1)
    return torch.sigmoid(log_yes - log_no)


@pytest.mark.parametrize("mode", ["none", "kv_cache", "packed"])
def test_every_mode_equals_one_forward_per_question(tiny, reference, mode):
    _, model, processor = tiny
    items, log_probs = reference
    judge = TransformersJudge(model=model, processor=processor, shared_prefix=mode, batch_size=2)
    result = judge.yes_prob(items)
    assert result.reasons == [None] * len(items)
    expected = expected_yes_prob(log_probs, judge)
    assert torch.allclose(result.probs.double(), expected, atol=1e-4, rtol=0)
    # Not trivially equal: the answers differ across images and questions.
    assert expected.max() - expected.min() > 0.05


@pytest.mark.parametrize("mode", ["kv_cache", "packed"])
def test_equality_check_catches_sequence_length_positions(tiny, reference, mode, monkeypatch):
    """The check is sharp: continuing questions at the prefix's token count (the usual mistake;
    M-RoPE continues at max position + 1, smaller for images) moves the answers past 1e-4."""
    _, model, processor = tiny
    items, log_probs = reference
    original = prefix_scoring.mrope_prefix_positions

    def token_count_positions(lengths, before, grids, merge, width):
        positions, _ = original(lengths, before, grids, merge, width)
        return positions, torch.tensor(lengths)

    monkeypatch.setattr(prefix_scoring, "mrope_prefix_positions", token_count_positions)
    judge = TransformersJudge(model=model, processor=processor, shared_prefix=mode, batch_size=3)
    wrong = judge.yes_prob(items).probs.double()
    assert (wrong - expected_yes_prob(log_probs, judge)).abs().max() > 1e-3


def test_raw_scoring_is_the_yes_mass(tiny):
    _, model, processor = tiny
    items = mixed_items()[:3]
    raw = TransformersJudge(model=model, processor=processor, scoring="raw").yes_prob(items)
    judge = TransformersJudge(model=model, processor=processor)
    norm = judge.yes_prob(items)
    for k, it in enumerate(items):
        p = reference_logits(model, processor, it).softmax(-1)
        p_yes, p_no = p[judge.yes_ids].sum(), p[judge.no_ids].sum()
        assert math.isclose(raw.probs[k].item(), p_yes.item(), rel_tol=1e-4)
        assert math.isclose(norm.probs[k].item(), (p_yes / (p_yes + p_no)).item(), rel_tol=1e-4)


def test_group_items_shares_equal_images_across_objects():
    a, b = noise_image(0, 32, 32), noise_image(1, 32, 32)
    items = [
        JudgeItem(a, "c", "q1"),
        JudgeItem(b, "c", "q2"),
        JudgeItem(noise_image(0, 32, 32), "c", "q3"),  # same pixels as a, another object
        JudgeItem(a, "other context", "q4"),
    ]
    groups = group_items(items)
    assert [g.item_indices for g in groups] == [[0, 2], [1], [3]]
    assert groups[0].questions == ["q1", "q3"]


def test_save_dir_loads_with_auto_classes(tmp_path):
    model, processor = build_tiny_vlm("qwen3_vl", seed=0, save_dir=tmp_path / "vlm")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm")
    assert type(loaded) is type(model)
    if is_torchvision_available():
        from transformers import AutoProcessor

        assert type(AutoProcessor.from_pretrained(tmp_path / "vlm")).__name__ == "Qwen3VLProcessor"
    items = mixed_items()[:5]
    from_path = TransformersJudge(model_path=str(tmp_path / "vlm")).yes_prob(items).probs
    in_memory = TransformersJudge(model=model, processor=processor).yes_prob(items).probs
    assert torch.allclose(from_path, in_memory, atol=1e-6)
    assert load_processor(tmp_path / "vlm").chat_template == processor.chat_template


def test_missing_model_path_names_the_path(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        TransformersJudge(model_path=str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        TransformersJudge(model_path=str(tmp_path / "empty"))


def test_bad_options_fail_clearly(tiny):
    _, model, processor = tiny
    with pytest.raises(ValueError, match="shared_prefix"):
        TransformersJudge(model=model, processor=processor, shared_prefix="paged")
    with pytest.raises(ValueError, match="scoring"):
        TransformersJudge(model=model, processor=processor, scoring="logit")
    with pytest.raises(ValueError, match="dtype"):
        TransformersJudge(model=model, processor=processor, dtype="float8")
    with pytest.raises(ValueError, match="model_path"):
        TransformersJudge()
    with pytest.raises(TypeError, match="item 0: expected a PIL image or an image tensor"):
        TransformersJudge(model=model, processor=processor).yes_prob(
            [JudgeItem(np.zeros((8, 8, 3)), "", "q")]
        )
    with pytest.raises(TypeError, match=r"item 0: expected an image tensor \[3, H, W\]"):
        TransformersJudge(model=model, processor=processor).yes_prob(
            [JudgeItem(torch.zeros(2, 8, 8), "", "q")]
        )


def test_non_finite_logits_give_nan_with_reason():
    model, processor = build_tiny_vlm("qwen3_vl", seed=0)
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    judge = TransformersJudge(model=model, processor=processor)
    result = judge.yes_prob(mixed_items()[:2])
    assert torch.isnan(result.probs).all()
    assert result.failures == {"non-finite judge logits": 2}


def test_generate_is_greedy_and_batched(tiny):
    _, model, processor = tiny
    judge = TransformersJudge(model=model, processor=processor)
    one = judge.generate([noise_image(0, 32, 32)], "Describe the image.", max_new_tokens=6)
    assert isinstance(one, str)
    assert judge.generate([noise_image(0, 32, 32)], "Describe the image.", max_new_tokens=6) == one
    many = judge.generate_many(
        [
            ([noise_image(0, 32, 32)], "Describe the image."),
            ([noise_image(1, 32, 32), noise_image(2, 64, 32)], "Which image is brighter?"),
            ([], "Write a rubric."),
        ],
        max_new_tokens=6,
    )
    assert len(many) == 3 and all(isinstance(a, str) for a in many)


def test_generate_stops_at_every_eos_of_the_generation_config(tiny, monkeypatch):
    """generate_many passes the generation config's whole eos list (Qwen2.5-VL's is
    [<|im_end|>, <|endoftext|>]), not only the tokenizer's single eos."""
    _, model, processor = tiny
    judge = TransformersJudge(model=model, processor=processor)
    tokenizer = processor.tokenizer
    both = [
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    ]
    monkeypatch.setattr(model.generation_config, "eos_token_id", both)
    seen = {}
    real_generate = model.generate

    def generate(**kwargs):
        seen.update(kwargs)
        return real_generate(**kwargs)

    monkeypatch.setattr(model, "generate", generate)
    judge.generate([noise_image(0, 32, 32)], "Describe the image.", max_new_tokens=2)
    assert seen["eos_token_id"] == both
    monkeypatch.setattr(model.generation_config, "eos_token_id", None)
    assert judge.eos_token_ids() == [tokenizer.eos_token_id]


def test_processor_is_pinned_to_the_pil_backend(tmp_path, monkeypatch):
    """Whether or not torchvision is installed (transformers 5 would then pick its torchvision
    backend), the judge's image processor is the PIL one, whose pixels the official qwen-vl-utils
    path gives (tests/parity/test_parity_qwen_vl_utils.py)."""
    from transformers.image_processing_backends import PilBackend

    from rewards.judges import transformers_judge

    build_tiny_vlm("qwen2_5_vl", seed=0, save_dir=tmp_path)
    assert isinstance(load_processor(tmp_path).image_processor, PilBackend)
    image_only = load_processor(tmp_path)

    class TorchvisionChoice:
        """Stands in for the torchvision-backend processor transformers 5 would load."""

    image_only.image_processor = TorchvisionChoice()
    monkeypatch.setattr(transformers_judge, "is_torchvision_available", lambda: True)
    monkeypatch.setattr(
        transformers_judge.AutoProcessor, "from_pretrained", lambda path: image_only
    )
    assert isinstance(load_processor(tmp_path).image_processor, PilBackend)


def test_dtype_and_release():
    model, processor = build_tiny_vlm("qwen2_5_vl", seed=0)
    judge = TransformersJudge(model=model, processor=processor, dtype="bf16")
    assert judge.model.dtype == torch.bfloat16
    result = judge.yes_prob(mixed_items()[:4])
    assert torch.isfinite(result.probs).all()
    judge.release()  # CPU: nothing to free, the judge keeps working
    assert torch.equal(judge.yes_prob(mixed_items()[:4]).probs, result.probs)


@pytest.mark.parametrize("name", ["tiny_qwen3_vl", "tiny_qwen2_5_vl"])
def test_tiny_judge_configs_instantiate(name):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    judge = hydra.utils.instantiate(cfg)
    assert isinstance(judge, TransformersJudge)
    result = judge.yes_prob(mixed_items()[:2])
    assert torch.isfinite(result.probs).all()


@pytest.mark.parametrize("name", ["qwen3_vl", "qwen2_5_vl", "vllm"])
def test_local_path_configs_need_a_path(name, tmp_path):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert OmegaConf.is_missing(cfg, "model_path")
    cfg.model_path = str(tmp_path / "absent")
    with pytest.raises(Exception, match="absent"):
        hydra.utils.instantiate(cfg)


def test_bench_judge_runs_and_prints_one_json_line(capsys, tmp_path):
    from bench.judge import main

    out = tmp_path / "results" / "judge.jsonl"
    result = main(
        ["--size", "tiny", "--images", "2", "--rubrics", "3", "--image-size", "32",
         "--repeats", "1", "--prompt-tokens", "8", "--question-tokens", "6", "--out", str(out)]
    )  # fmt: skip
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == result
    assert out.read_text() == last + "\n"
    for mode in ("none", "kv_cache", "packed"):
        assert result[f"{mode}_scores_per_s"] > 0
        assert result[f"{mode}_forward_ms"] > 0 and result[f"{mode}_host_ms"] > 0
        assert result[f"{mode}_device_prep_ms"] > 0  # the pixels are preprocessed on the device
        call_ms = 1000 * result["images"] * result["rubrics"] / result[f"{mode}_scores_per_s"]
        assert result[f"{mode}_forward_ms"] <= call_ms  # inside the forward is part of the call
    assert result["kv_cache_max_abs_diff"] < 1e-4 and result["packed_max_abs_diff"] < 1e-4
    assert result["speedup"] == result[f"speedup_{result['best_shared_mode']}"]
    assert result["image_tokens"] == 4 and result["input"] == "tensor"
    pil = main(
        ["--size", "tiny", "--images", "2", "--rubrics", "3", "--image-size", "32",
         "--repeats", "1", "--prompt-tokens", "8", "--question-tokens", "6", "--input", "pil",
         "--modes", "packed"]
    )  # fmt: skip
    assert pil["packed_scores_per_s"] > 0 and "speedup" not in pil  # no baseline: no speedup


def test_shared_prefix_needs_an_mrope_model(tiny):
    _, model, processor = tiny

    class NoRope(torch.nn.Module):
        model = torch.nn.Module()

    with pytest.raises(ValueError, match="shared_prefix='none'"):
        TransformersJudge(model=NoRope(), processor=processor, shared_prefix="packed")
