"""HPSv3 (Ma et al., ICCV 2025): Qwen2-VL-7B with a small reward head, trained on HPDv3.

The image and a rating instruction that contains the prompt and ends with a special
``<|Reward|>`` token go through Qwen2-VL; the last hidden state at that token feeds a 3-layer MLP
head (``hidden -> 1024 -> 16 -> 2``, ReLU between, float32) whose two outputs are the mean and
log-scale of a Gaussian preference score. The score is the mean (output 0), as the official
inference code returns. As in the official forward, text positions are sequential (the image's
multimodal RoPE grid is not used), and images are resized to ``pixels`` = 256*28*28 pixels. In
bf16 (the default, as the official inferencer) the backbone's buffers are cast too, as the
official ``model.to(torch.bfloat16)`` casts them: the rotary frequencies are then bf16-rounded,
which moves the scores by about as much as bf16 itself (measured in docs/scalar_rewards.md).
The official config asks for flash-attention-2 where ``flash_attn`` is installed (a GPU);
without it, and here, attention is sdpa: the same arithmetic, rounded differently in bf16.

Raw score: unbounded; real images typically fall between about 0 and 15 (the HPSv3 paper reports
model averages around 7-11). Normalisations (``normalize``): ``"none"``, ``"divide_10"``.

Local files: ``path``, the Qwen2-VL-7B-Instruct folder (config.json, tokenizer, image processor,
chat template; its weights are not read), and ``checkpoint``, the ``HPSv3.safetensors`` file
(backbone + ``rm_head``), in the official key layout (``model.*``, ``visual.*``, ``lm_head.*``,
``rm_head.*``) or the transformers 5 layout. The instruction is ``prompt_template`` with
``{prompt}`` filled in and must contain ``<|Reward|>``; the default is the official one: HPSv3's
``INSTRUCTION`` followed by its ``prompt_with_special_token`` (both stored verbatim in
``rewards/scalar/texts/``), as the official ``HPSv3RewardInferencer`` sends them. Images go through
the folder's image processor on transformers' PIL backend (``load_processor`` pins it), which
gives the official pixels.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from rewards.scalar.common import (
    ScalarReward,
    assign_exactly,
    load_state_dict_file,
    model_text,
    require_dir,
    require_file,
)

REWARD_TOKEN = "<|Reward|>"
HEAD_SIZES = (1024, 16, 2)
DEFAULT_PIXELS = 256 * 28 * 28
# The official instruction (its placeholder is "{text_prompt}") and the reward-token suffix.
OFFICIAL_INSTRUCTION = model_text("hpsv3_instruction.txt")
OFFICIAL_REWARD_SUFFIX = model_text("hpsv3_reward_suffix.txt")
DEFAULT_PROMPT = OFFICIAL_INSTRUCTION.replace("{text_prompt}", "{prompt}") + OFFICIAL_REWARD_SUFFIX

# transformers < 5 (the official checkpoint) -> transformers 5 module names.
_KEY_LAYOUT = (
    (re.compile(r"^visual\."), "model.visual."),
    (re.compile(r"^model\.(?!language_model\.|visual\.)"), "model.language_model."),
)
BASE_FILES = (
    "config.json",
    "tokenizer.json|vocab.json",
    "preprocessor_config.json|processor_config.json",
)


def reward_head(hidden_size: int) -> nn.Sequential:
    """HPSv3's head: Linear-ReLU-Dropout-Linear-ReLU-Linear, keys ``0``, ``3``, ``5``."""
    wide, narrow, out = HEAD_SIZES
    return nn.Sequential(
        nn.Linear(hidden_size, wide),
        nn.ReLU(),
        nn.Dropout(0.05),
        nn.Linear(wide, narrow),
        nn.ReLU(),
        nn.Linear(narrow, out),
    )


def to_current_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename official (transformers 4.x) Qwen2-VL keys to the transformers 5 module layout."""
    out = {}
    for key, value in state.items():
        for pattern, replacement in _KEY_LAYOUT:
            key = pattern.sub(replacement, key, count=1)
        out[key] = value
    return out


class HPSv3Reward(ScalarReward):
    """HPSv3 from a local Qwen2-VL-7B-Instruct folder and the local HPSv3 checkpoint file."""

    name = "hpsv3"
    NORMALIZATIONS = {"none": lambda s: s, "divide_10": lambda s: s / 10.0}

    def __init__(
        self,
        path: str,
        checkpoint: str,
        device: str = "cpu",
        dtype: str = "bfloat16",
        batch_size: int = 4,
        normalize: str = "none",
        pixels: int | None = DEFAULT_PIXELS,
        prompt_template: str = DEFAULT_PROMPT,
        prompt_file: str | None = None,
    ) -> None:
        super().__init__(device=device, dtype=dtype, batch_size=batch_size, normalize=normalize)
        self.path = require_dir(path, BASE_FILES, "hpsv3 Qwen2-VL base folder")
        self.checkpoint = require_file(checkpoint, "hpsv3 checkpoint")
        if prompt_file is not None:
            prompt_template = require_file(prompt_file, "hpsv3 prompt").read_text()
        if "{prompt}" not in prompt_template or prompt_template.count(REWARD_TOKEN) != 1:
            raise ValueError(f"hpsv3 prompt_template needs '{{prompt}}' and one {REWARD_TOKEN}")
        self.prompt_template = prompt_template
        self.pixels = pixels
        self.backbone = self.head = self.processor = None

    def load(self) -> None:
        from accelerate import init_empty_weights
        from transformers import AutoConfig, Qwen2VLForConditionalGeneration

        from rewards.judges.transformers_judge import load_processor

        self.processor = load_processor(self.path)
        self.processor.tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
        self.reward_token_id = self.processor.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        state = to_current_layout(load_state_dict_file(self.checkpoint))
        head_state = {
            k.removeprefix("rm_head."): v for k, v in state.items() if k.startswith("rm_head.")
        }
        state = {k: v for k, v in state.items() if not k.startswith("rm_head.")}
        config = AutoConfig.from_pretrained(self.path)
        embed = state.get("model.language_model.embed_tokens.weight")
        if embed is None or not head_state:
            raise KeyError(f"{self.checkpoint} lacks the embeddings or the rm_head of HPSv3")
        config.text_config.vocab_size = embed.shape[0]
        if self.reward_token_id >= embed.shape[0]:
            raise ValueError(
                f"{REWARD_TOKEN} gets id {self.reward_token_id} from the tokenizer in {self.path}, "
                f"but {self.checkpoint} has only {embed.shape[0]} embeddings: tokenizer mismatch"
            )
        with init_empty_weights():
            backbone = Qwen2VLForConditionalGeneration(config)
        misfit = f"{self.checkpoint} does not fit HPSv3 on {self.path}"
        assign_exactly(backbone, state, self.dtype, misfit)
        head = reward_head(embed.shape[1])
        assign_exactly(head, head_state, torch.float32, misfit)
        # As the official create_model_and_processor's model.to(torch.bfloat16): floating buffers
        # (the rotary inv_freq) take the dtype too, which moves bf16 scores (tests/parity).
        self.backbone = backbone.to(self.device, self.dtype).eval()
        self.head = head.to(self.device).eval()

    def unload(self) -> None:
        self.backbone = self.head = self.processor = None

    def inputs(self, images, prompts) -> dict[str, torch.Tensor]:
        """Chat-formatted, right-padded processor inputs, one conversation per image."""
        texts = [
            self.processor.apply_chat_template(
                [{"role": "user", "content": [
                    {"type": "image"},
                    {"type": "text", "text": self.prompt_template.replace("{prompt}", prompt)},
                ]}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for prompt in prompts
        ]  # fmt: skip
        size = {"shortest_edge": self.pixels, "longest_edge": self.pixels} if self.pixels else None
        kwargs = {"size": size} if size else {}
        enc = self.processor(
            text=texts,
            images=list(images),
            padding=True,
            padding_side="right",
            return_tensors="pt",
            **kwargs,
        )
        return {k: v.to(self.device) for k, v in enc.items()}

    def raw_scores(self, images, prompts):
        enc = self.inputs(images, prompts)
        ids = enc["input_ids"]
        is_reward = ids == self.reward_token_id
        if not bool((is_reward.sum(1) == 1).all()):
            raise ValueError(f"every hpsv3 input must hold exactly one {REWARD_TOKEN}")
        positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        hidden = self.backbone.model(
            input_ids=ids,
            attention_mask=enc["attention_mask"],
            pixel_values=enc["pixel_values"].to(self.dtype),
            image_grid_thw=enc["image_grid_thw"],
            position_ids=positions,
        ).last_hidden_state
        out = self.head(hidden[is_reward].float())
        return out[:, 0], {"log_sigma": out[:, 1]}, [None] * len(prompts)
