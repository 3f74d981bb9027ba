"""Official side of the HPSv3 parity test; runs in the hpsv3 environment (hpsv3 1.0.0 from PyPI,
transformers 4.45.2 as it pins).

1. Writes a small "Qwen2-VL-Instruct" base folder as transformers 4.45 saves one: config, weights,
   the test's byte-level BPE tokenizer under Qwen2-VL's special tokens, Qwen2-VL's image processor
   and the published Qwen2-VL-7B-Instruct chat template.
2. Builds the package's own model through ``hpsv3.train.create_model_and_processor`` from that
   folder (``Qwen2VLRewardModelBT`` with the ranknet head, ``<|Reward|>`` added, embeddings
   resized), with the official HPSv3_7B.yaml except for float32 and the folder, gives it seeded
   random weights and saves them as ``HPSv3.safetensors`` is laid out (transformers 4.x key names;
   backbone bfloat16, head float32, as training in bf16 leaves them).
3. Scores every image with ``HPSv3RewardInferencer(config, checkpoint).reward`` (one batch, right
   padded), keeping output 0 (the mean) as the official example does: in float32, then again in
   the official bfloat16 setting (``bf16: True``, ``torch_dtype: bfloat16``, the head in float32).
   On a GPU the head runs under ``torch.autocast("cuda", dtype=torch.float32)``, which casts the
   bf16 hidden state to float32 for the head's matmuls; that autocast does nothing on the CPU, where
   the float32 head would refuse a bf16 input, so here the head is given the hidden state cast to
   float32 first: the same arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import hpsv3
import torch
from hpsv3 import HPSv3RewardInferencer
from hpsv3.train import create_model_and_processor
from hpsv3.utils.parser import (
    DataConfig,
    ModelConfig,
    PEFTLoraConfig,
    TrainingConfig,
    parse_args_with_yaml,
)
from official_common import randomize, read_spec, write_result
from omegaconf import OmegaConf
from safetensors.torch import save_file
from transformers import (
    Qwen2TokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
)

SPECIALS = [
    "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip


def write_base_folder(spec, base: Path) -> None:
    tokenizer = Qwen2TokenizerFast(
        tokenizer_file=spec["tokenizer_json"],
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=SPECIALS,
    )
    image_processor = Qwen2VLImageProcessor(
        min_pixels=56 * 56, max_pixels=28 * 28 * 1280, patch_size=14, merge_size=2
    )
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=Path(spec["chat_template"]).read_text(),
    )
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in [*SPECIALS, "<|endoftext|>"]}
    config = Qwen2VLConfig(
        vocab_size=spec["vocab_size"],
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1_000_000.0,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        tie_word_embeddings=False,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vision_token_id=ids["<|vision_pad|>"],
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_config={
            "depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_chans": 3,
        },
        torch_dtype="float32",
    )  # fmt: skip
    torch.manual_seed(spec["seed"])
    Qwen2VLForConditionalGeneration(config).save_pretrained(base)
    processor.save_pretrained(base)


def inference_config(spec, base: Path, bf16: bool = False) -> Path:
    """HPSv3's own HPSv3_7B.yaml with this base folder, without flash attention (flash_attn is not
    installed, so the official code would pick sdpa anyway); float32 unless ``bf16`` keeps the
    official bfloat16 setting."""
    official = Path(hpsv3.__file__).parent / "config" / "HPSv3_7B.yaml"
    config = OmegaConf.load(official)
    config.model_name_or_path = str(base)
    if not bf16:
        config.bf16 = False
        config.torch_dtype = "float32"
    config.disable_flash_attn2 = True
    config.output_dir = str(Path(spec["work"]) / "outputs")
    config.report_to = "none"
    target = Path(spec["work"]) / f"HPSv3_parity{'_bf16' if bf16 else ''}.yaml"
    OmegaConf.save(config, target)
    return target


class Float32Input(torch.nn.Module):
    """Casts the hidden state to float32, as autocast(cuda, float32) does for the head's matmuls."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden.float()


def main() -> None:
    spec = read_spec()
    base = Path(spec["base"])
    write_base_folder(spec, base)
    config_path = inference_config(spec, base)

    (data, training, model_config, lora), _ = parse_args_with_yaml(
        (DataConfig, TrainingConfig, ModelConfig, PEFTLoraConfig), str(config_path), is_train=False
    )
    model, processor, _ = create_model_and_processor(model_config, lora, training)
    randomize(model, spec["seed"])
    state = {
        key: value.detach().to(torch.float32 if key.startswith("rm_head.") else torch.bfloat16)
        for key, value in model.state_dict().items()
    }
    save_file({k: v.contiguous() for k, v in state.items()}, spec["checkpoint"])
    del model

    inferencer = HPSv3RewardInferencer(str(config_path), spec["checkpoint"], device="cpu")
    with torch.no_grad():
        batch = inferencer.prepare_batch(spec["images"], spec["prompts"])
        rewards = inferencer.reward(spec["images"], spec["prompts"])
    torch.save(
        {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")},
        spec["inputs"],
    )
    reward_id = inferencer.processor.tokenizer.convert_tokens_to_ids("<|Reward|>")
    del inferencer

    bf16 = HPSv3RewardInferencer(str(inference_config(spec, base, bf16=True)), spec["checkpoint"],
                                 device="cpu")  # fmt: skip
    assert next(bf16.model.model.parameters()).dtype == torch.bfloat16
    assert next(bf16.model.rm_head.parameters()).dtype == torch.float32
    head = bf16.model.rm_head
    bf16.model.rm_head = torch.nn.Sequential(Float32Input(), head)  # the GPU autocast, by hand
    with torch.no_grad():
        rewards_bf16 = bf16.reward(spec["images"], spec["prompts"]).float()
    write_result(
        spec,
        {
            "scores": rewards[:, 0].tolist(),
            "log_sigma": rewards[:, 1].tolist(),
            "scores_bf16": rewards_bf16[:, 0].tolist(),
            "reward_token_id": reward_id,
            "embedding_rows": int(state["model.embed_tokens.weight"].shape[0]),
        },
    )


if __name__ == "__main__":
    main()
