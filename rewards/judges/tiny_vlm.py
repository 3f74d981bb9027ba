"""Tiny random-weight Qwen3-VL / Qwen2.5-VL judges with a locally built tokenizer.

Tests, demos and the judge benchmark need a real transformers VLM without downloading one. This
module builds ``Qwen3VLForConditionalGeneration`` or ``Qwen2_5_VLForConditionalGeneration`` from a
small config (random weights, deterministic per seed and device) and the matching real processor
class with the real (PIL) image processor. The tokenizer is a byte-level BPE trained in-process on
a small corpus that contains the yes/no spellings a judge reads, plus every Qwen special token,
and a Qwen-style chat template; the code path is the one a full-size checkpoint takes, only the
sizes differ. Compute cost depends on shape, not weights, so :func:`vlm_config` with full-size
numbers gives honest timings.

Patch and merge sizes are chosen so that 32-64 px images become a handful of image tokens
(``patch_size=8, merge_size=2``: a 32 px image is 4 tokens, a 64 px image 16).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    PreTrainedModel,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.tokenization_utils_tokenizers import PreTrainedTokenizerFast

from rewards.judges.transformers_judge import (
    VIDEO_PROCESSOR_CLASSES,
    build_processor,
    video_processor_settings,
)

ARCHS = ("qwen3_vl", "qwen2_5_vl")

# The special tokens of the Qwen2/2.5/3-VL tokenizers, in their usual order.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The pre-tokenizer split of the Qwen2 family (GPT-4 style): newlines and letters stay apart, so a
# prompt split after a newline tokenizes the same in pieces as in one go.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# A Qwen-style chat template: one turn per message, images as vision_start/image_pad/vision_end.
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# Judge answers in every spelling the scorer looks for, and typical judge prompts.
_CORPUS = (
    "yes no Yes No YES NO yes. no. Yes. No. yes, no, Yes, No,",
    "system user assistant You are a helpful assistant.",
    "Answer yes or no. Answer with Yes or No only. The answer is yes. The answer is no.",
    "Does the image show a red apple on a wooden table? Is the sky blue? Is there a dog?",
    "Is the main subject centred? Are the colours vivid and the lighting natural? Is text legible?",
    "A photo of a cat sitting on a sofa, a watercolour landscape, a portrait of an old man.",
    "Does the image follow the prompt? Is the image sharp, well composed and free of artefacts?",
    "Rule: the image contains exactly two people. Question: is this rule satisfied by the image?",
    "0 1 2 3 4 5 6 7 8 9 10 100 first second third left right top bottom background foreground",
)


@dataclass(frozen=True)
class VLMSize:
    """The shape knobs of a random-weight Qwen-VL judge (text decoder and vision tower)."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    vocab_size: int | None = None  # None: the tokenizer's size
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    patch_size: int = 8
    merge_size: int = 2
    initializer_range: float = 0.2  # larger than usual, so random answers differ between inputs
    # M-RoPE split of the rotary half-dimension into (t, h, w) sections; None: about 1/4, 3/8, 3/8.
    mrope_section: tuple[int, int, int] | None = None
    deepstack_layers: tuple[int, ...] = (0,)  # Qwen3-VL: vision layers fed to the decoder
    position_embedding_grid: int = 8  # Qwen3-VL: learned vision positions, grid x grid
    full_attention_blocks: tuple[int, ...] | None = None  # Qwen2.5-VL; None: the last block


# The tiny test model, a CPU benchmark model (~64 image tokens for a 256 px image) and the shapes
# of Qwen3-VL-8B / Qwen2.5-VL-7B (for GPU timings with random weights).
SIZES: dict[str, VLMSize] = {
    "tiny": VLMSize(),
    "small": VLMSize(
        hidden_size=512,
        intermediate_size=1024,
        num_layers=4,
        num_heads=8,
        num_kv_heads=4,
        head_dim=64,
        vision_hidden_size=128,
        vision_intermediate_size=256,
        vision_depth=2,
        vision_heads=4,
        patch_size=16,
        initializer_range=0.02,
        position_embedding_grid=16,
    ),
    "qwen3_vl_8b": VLMSize(
        hidden_size=4096,
        intermediate_size=12288,
        num_layers=36,
        num_heads=32,
        num_kv_heads=8,
        head_dim=128,
        vocab_size=151936,
        vision_hidden_size=1152,
        vision_intermediate_size=4304,
        vision_depth=27,
        vision_heads=16,
        patch_size=16,
        initializer_range=0.02,
        mrope_section=(24, 20, 20),
        deepstack_layers=(8, 16, 24),
        position_embedding_grid=48,
    ),
    "qwen2_5_vl_7b": VLMSize(
        hidden_size=3584,
        intermediate_size=18944,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        head_dim=128,
        vocab_size=152064,
        vision_hidden_size=1280,
        vision_intermediate_size=3420,
        vision_depth=32,
        vision_heads=16,
        patch_size=14,
        initializer_range=0.02,
        mrope_section=(16, 24, 24),
        full_attention_blocks=(7, 15, 23, 31),
    ),
}


def build_qwen_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here on a small corpus, with the Qwen special tokens.

    Every byte is in the alphabet, so any text encodes; "yes", " yes", "Yes", "no", ... are single
    tokens because the corpus repeats them.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in _CORPUS for _ in range(8)], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    fast.chat_template = QWEN_CHAT_TEMPLATE
    return fast


def vlm_config(
    arch: str, size: VLMSize, tokenizer: PreTrainedTokenizerFast
) -> Qwen3VLConfig | Qwen2_5_VLConfig:
    """The model config of ``arch`` at ``size``, with token ids taken from ``tokenizer``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown VLM arch {arch!r}; expected one of {ARCHS}")
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    vocab_size = size.vocab_size or len(tokenizer)
    if vocab_size < len(tokenizer):
        raise ValueError(
            f"vocab_size {vocab_size} is smaller than the tokenizer ({len(tokenizer)})"
        )
    text = dict(
        vocab_size=vocab_size,
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        max_position_embeddings=32768,
        initializer_range=size.initializer_range,
        pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    # M-RoPE: the rotary half-dimension split into temporal / height / width sections.
    half = size.head_dim // 2
    section = list(size.mrope_section or (half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8))
    if sum(section) != half:
        raise ValueError(f"mrope_section {section} must add up to head_dim / 2 = {half}")
    vision = dict(
        depth=size.vision_depth,
        hidden_size=size.vision_hidden_size,
        intermediate_size=size.vision_intermediate_size,
        num_heads=size.vision_heads,
        patch_size=size.patch_size,
        spatial_merge_size=size.merge_size,
        temporal_patch_size=2,
        out_hidden_size=size.hidden_size,
        initializer_range=size.initializer_range,
    )
    tokens = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    if arch == "qwen3_vl":
        text.update(
            head_dim=size.head_dim,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5_000_000.0,
                "mrope_section": section,
                "mrope_interleaved": True,
            },
        )
        # Deepstack: features of early vision layers are added to the first decoder layers.
        vision.update(
            num_position_embeddings=size.position_embedding_grid**2,
            deepstack_visual_indexes=list(size.deepstack_layers),
        )
        return Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
    if size.hidden_size // size.num_heads != size.head_dim:
        raise ValueError("Qwen2.5-VL needs head_dim == hidden_size // num_heads")
    rope = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": section}
    text.update(rope_parameters=rope)
    window = 4 * size.patch_size * size.merge_size
    vision.update(
        hidden_act="silu",
        window_size=window,
        fullatt_block_indexes=list(size.full_attention_blocks or [size.vision_depth - 1]),
        tokens_per_second=2,
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)


def build_image_processor(arch: str, size: VLMSize) -> Qwen2VLImageProcessorPil:
    """The real Qwen2-VL image processor (PIL backend) at this patch/merge size.

    The pixel bounds let small images keep their size (a 32 px image stays 32 px) and cap large
    ones at 1024x1024.
    """
    factor = size.patch_size * size.merge_size
    mean_std = {}
    if arch == "qwen3_vl":
        mean_std = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    return Qwen2VLImageProcessorPil(
        patch_size=size.patch_size,
        merge_size=size.merge_size,
        temporal_patch_size=2,
        size={"shortest_edge": factor * factor, "longest_edge": 1024 * 1024},
        **mean_std,
    )


_MODEL_CLASSES = {
    "qwen3_vl": (Qwen3VLForConditionalGeneration, Qwen3VLProcessor),
    "qwen2_5_vl": (Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor),
}


def build_tiny_vlm(
    arch: str = "qwen3_vl",
    seed: int = 0,
    save_dir: str | Path | None = None,
    size: str | VLMSize = "tiny",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A random-weight Qwen-VL model (eval mode) and its processor, deterministic per seed.

    ``size`` is a key of :data:`SIZES` or a :class:`VLMSize`. The weights are created directly
    on ``device`` in ``dtype`` (a full-size model never passes through CPU float32). With
    ``save_dir`` the model, the tokenizer, the image processor, the chat template and the
    processor config are written there, in the layout ``AutoModelForImageTextToText`` /
    ``AutoProcessor`` read.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown VLM arch {arch!r}; expected one of {ARCHS}")
    shape = SIZES[size] if isinstance(size, str) else size
    tokenizer = build_qwen_tokenizer()
    config = vlm_config(arch, shape, tokenizer)
    model_cls, processor_cls = _MODEL_CLASSES[arch]
    previous_dtype = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            model = model_cls(config).eval()
    finally:
        torch.set_default_dtype(previous_dtype)
    processor = build_processor(
        processor_cls, build_image_processor(arch, shape), tokenizer, QWEN_CHAT_TEMPLATE
    )
    if save_dir is not None:
        save_vlm(model, processor, save_dir)
    return model, processor


def save_vlm(model: PreTrainedModel, processor: ProcessorMixin, save_dir: str | Path) -> Path:
    """Write model + processor so that ``from_pretrained`` on the folder rebuilds both."""
    out = Path(save_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # Without torchvision the processor is image-only (see build_processor); write the video
    # processor config and the real class name anyway, so that AutoProcessor resolves the folder
    # wherever torchvision is installed.
    real_cls = getattr(processor, "real_processor_class", None)
    if real_cls is not None:
        video = {
            "video_processor_type": VIDEO_PROCESSOR_CLASSES[real_cls],
            **video_processor_settings(processor.image_processor),
        }
        (out / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2) + "\n")
        config_file = out / "processor_config.json"
        data = json.loads(config_file.read_text()) if config_file.exists() else {}
        data["processor_class"] = real_cls
        config_file.write_text(json.dumps(data, indent=2) + "\n")
    return out


def tiny_vlm_judge(arch: str = "qwen3_vl", seed: int = 0, size: str = "tiny", **judge_kwargs):
    """A :class:`TransformersJudge` over a freshly built random model (for ``judge=tiny_*``)."""
    from rewards.judges.transformers_judge import TransformersJudge

    model, processor = build_tiny_vlm(arch, seed=seed, size=size)
    return TransformersJudge(model=model, processor=processor, **judge_kwargs)
