"""Every trainer default and SD3.5-M preset pinned to the reference Flow-GRPO implementation,
yifan123/flow_grpo, each value with the file it comes from (read at commit ac4c86e and the
published config/grpo.py with the fast presets). The reference cannot run here (it needs CUDA
and the SD3.5-M weights), so its numbers are restated from its source and the behaviour around
them (EMA schedule, LoRA matching, window draws) is recomputed independently."""

from fractions import Fraction
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rl.config import ConfigError, parse_config
from rl.ema import EMA
from rl.lora import ALL_ATTENTION_TARGET_MODULES, TARGET_MODULES, LoraSettings, make_trainable

CONF = str(Path(__file__).resolve().parents[1] / "conf")
BASE = "yifan123/flow_grpo config/base.py"
GRPO = "yifan123/flow_grpo config/grpo.py"
TRAIN_SD3 = "yifan123/flow_grpo scripts/train_sd3.py"
TRAIN_FAST = "yifan123/flow_grpo scripts/train_sd3_fast.py"
FAST_PIPE = "yifan123/flow_grpo flow_grpo/diffusers_patch/sd3_pipeline_with_logprob_fast.py"


def preset(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("train", overrides=[f"experiment={name}", *overrides])
    for key in OmegaConf.missing_keys(cfg):
        OmegaConf.update(cfg, key, "/given/by/user")
    if cfg.data.prompts is None and cfg.data.prompt_file is None:
        cfg.data.prompt_file = "/given/by/user/prompts.txt"
    return parse_config(cfg)


def check(cfg, expected: dict) -> None:
    """``expected``: dotted path -> (value, source). One message lists every mismatch."""
    wrong = []
    for path, (value, source) in expected.items():
        node = cfg
        for part in path.split("."):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        if node != value:
            wrong.append(f"{path}={node!r}, reference {value!r} ({source})")
    assert not wrong, "\n".join(wrong)


# The reference's LoRA target list, in its own order (scripts/train_sd3.py and train_sd3_fast.py).
REFERENCE_TARGETS = [
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v",
]  # fmt: skip


def test_train_defaults_are_the_reference_recipe():
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = parse_config(compose("train", overrides=["data.prompts=[a]"]))
    check(
        cfg,
        {
            "rollout.num_steps": (10, f"{GRPO} sample.num_steps"),
            "rollout.guidance_scale": (4.5, f"{BASE} sample.guidance_scale"),
            "rollout.noise_level": (0.7, f"{BASE} sample.noise_level"),
            "rollout.sde_kind": ("sde", "sd3_sde_with_logprob.py default"),
            "rollout.num_train_steps": (9, f"{GRPO} train.timestep_fraction 0.99 x 10"),
            "train.learning_rate": (3e-4, f"{BASE} train.learning_rate"),
            "train.adam_betas": ([0.9, 0.999], f"{BASE} adam_beta1/2"),
            "train.adam_weight_decay": (1e-4, f"{BASE} adam_weight_decay"),
            "train.adam_epsilon": (1e-8, f"{BASE} adam_epsilon"),
            "train.max_grad_norm": (1.0, f"{BASE} max_grad_norm"),
            "train.clip_range": (1e-4, f"{BASE} clip_range"),
            "train.adv_clip_max": (5.0, f"{BASE} adv_clip_max"),
            "train.beta": (0.04, f"{GRPO} general_ocr_sd3 / geneval_sd3 train.beta"),
            "train.global_std": (True, f"{GRPO} sample.global_std"),
            "train.same_latent": (False, f"{BASE} sample.same_latent"),
            "train.kl_include_dt": (False, f"{TRAIN_SD3} kl_loss / (2 std_dev_t**2)"),
            "train.shuffle_samples": (True, f"{TRAIN_SD3} perm = torch.randperm(...)"),
            "train.optimizer_steps_per_epoch": (2, f"{GRPO} gradient_accumulation = batches//2"),
            "train.batch_size": (9, f"{GRPO} general_ocr_sd3 sample.train_batch_size"),
            "train.micro_batch_size": (9, f"{GRPO} train.batch_size = sample.train_batch_size"),
            "train.detach_uncond": (True, f"{TRAIN_SD3} line 190 noise_pred_uncond.detach()"),
            "train.allow_tf32": (True, f"{BASE} allow_tf32"),
            "rollout.eval_num_steps": (40, f"{GRPO} sample.eval_num_steps"),
            "lora.rank": (32, f"{TRAIN_SD3} LoraConfig(r=32)"),
            "lora.alpha": (64.0, f"{TRAIN_SD3} lora_alpha=64"),
            "ema.decay": (0.9, f"{TRAIN_SD3} EMAModuleWrapper(decay=0.9)"),
            "ema.update_every": (8, f"{TRAIN_SD3} update_step_interval=8"),
            "ema.enabled": (True, f"{GRPO} general_ocr_sd3 / geneval_sd3 train.ema"),
            "ema.repeat": (2, f"{GRPO} 4 batches / accumulation 2 per GPU at gpu_number=32"),
        },
    )
    assert sorted(cfg.lora.target_modules) == sorted(REFERENCE_TARGETS), TRAIN_SD3
    assert LoraSettings().target_modules == list(TARGET_MODULES)


def test_pickscore_preset_is_the_reference_pickscore_sd3():
    cfg = preset("sd35m_pickscore")
    source = f"{GRPO}:pickscore_sd3"
    check(
        cfg,
        {
            "rollout.height": (512, f"{source} resolution"),
            "rollout.guidance_scale": (4.5, f"{source} sample.guidance_scale"),
            "rollout.noise_level": (0.7, f"{BASE} sample.noise_level"),
            "rollout.num_train_steps": (9, f"{source} timestep_fraction 0.99"),
            "train.group_size": (24, f"{source} sample.num_image_per_prompt"),
            "train.groups_per_epoch": (48, f"{source} 48 prompts per epoch"),
            "train.batch_size": (9, f"{source} sample.train_batch_size"),
            "train.micro_batch_size": (9, f"{source} train.batch_size"),
            "rollout.eval_num_steps": (40, f"{source} sample.eval_num_steps"),
            "train.optimizer_steps_per_epoch": (2, f"{source} gradient_accumulation_steps"),
            "train.beta": (0.01, f"{source} train.beta"),
            "train.clip_range": (1e-4, f"{BASE} clip_range"),
            "train.global_std": (True, f"{source} sample.global_std"),
            "train.same_latent": (False, f"{source} sample.same_latent"),
            "train.mixed_precision": ("fp16", f"{BASE} mixed_precision"),
            "model.dtype": ("float32", f"{TRAIN_SD3} transformer and VAE kept in float32"),
            "ema.enabled": (True, f"{source} train.ema"),
        },
    )


def test_fast_nocfg_preset_is_the_reference_pickscore_sd3_fast_nocfg():
    cfg = preset("sd35m_fast_nocfg")
    source = f"{GRPO}:pickscore_sd3_fast_nocfg"
    check(
        cfg,
        {
            "rollout.guidance_scale": (1.0, f"{source} sample.guidance_scale, train.cfg False"),
            "rollout.uses_cfg": (False, f"{source} train.cfg = False"),
            "rollout.sde_kind": ("cps", f"{source} sample.sde_type"),
            "rollout.noise_level": (0.8, f"{source} sample.noise_level"),
            "rollout.sde_window_size": (3, f"{source} sample.sde_window_size"),
            "rollout.sde_window_range": ((0, 5), f"{source} sde_window_range (0, num_steps//2)"),
            "rollout.sde_window": (None, f"{FAST_PIPE}: a random window per batch, never fixed"),
            "rollout.num_train_steps": (3, f"{TRAIN_FAST} num_train_timesteps = window size"),
            "train.group_size": (18, f"{source} sample.num_image_per_prompt"),
            "train.groups_per_epoch": (64, f"{source} 64 prompts per epoch"),
            "train.batch_size": (9, f"{source} sample.train_batch_size"),
            "train.micro_batch_size": (9, f"{source} train.batch_size"),
            "train.optimizer_steps_per_epoch": (2, f"{source} gradient_accumulation_steps"),
            "train.clip_range": (1e-5, f"{source} train.clip_range"),
            "train.beta": (0.0, f"{source} train.beta"),
            "train.global_std": (True, f"{source} sample.global_std"),
            "train.shuffle_samples": (False, f"{TRAIN_FAST} trains samples in sampled order"),
            "train.mixed_precision": ("fp16", f"{BASE} mixed_precision"),
            "model.dtype": ("float32", f"{TRAIN_FAST} transformer and VAE kept in float32"),
            "ema.enabled": (True, f"{source} train.ema"),
        },
    )
    # start = random.randint(low, high - size): every start of 0, 1, 2 (inclusive), uniformly
    gen = torch.Generator().manual_seed(0)
    starts = torch.tensor([cfg.rollout.draw_window(gen)[0] for _ in range(3000)])
    counts = torch.bincount(starts, minlength=3)
    assert counts.numel() == 3 and (counts - 1000).abs().max() < 100, (FAST_PIPE, counts)


def test_fp16_precision_needs_a_float32_model():
    with pytest.raises(ConfigError, match="set model.dtype=float32, not bfloat16"):
        preset("sd35m_pickscore", "model.dtype=bfloat16")
    assert preset("sd35m_single_gpu_80gb").train.mixed_precision == "bf16"  # stated, not inherited


def test_ema_follows_the_reference_warmup_and_cadence_by_hand():
    """flow_grpo/ema.py, called after every micro-batch with s = optimizer steps done: update
    when (s + 1) % every == 0 with decay min((1 + s) / (10 + s), decay). Two micro-batches per
    optimizer step, every=2, decay=0.3 (so the cap is reached at s=3), shadow starting at 0. (The
    trainer calls it once per optimizer step with ema.repeat updates: tests/test_rl_recipe.py.)"""
    param = torch.nn.Parameter(torch.zeros(1))
    ema = EMA([param], decay=0.3, update_every=2)
    calls = [(0, 1.0), (1, 2.0), (1, 2.0), (2, 3.0), (2, 3.0), (3, 4.0)]  # (s, weight after s)
    by_hand = [
        None,  # s=0: (0 + 1) % 2 != 0, no update
        Fraction(0) + (1 - Fraction(2, 11)) * (2 - 0),  # d = 2/11: 18/11
        Fraction(18, 11) + Fraction(9, 11) * (2 - Fraction(18, 11)),  # again: 234/121
        None,
        None,
        Fraction(234, 121) + Fraction(7, 10) * (4 - Fraction(234, 121)),  # d = min(4/13, .3)
    ]
    assert by_hand[1] == Fraction(18, 11) and by_hand[5] == Fraction(409, 121)
    shadow = 0.0
    for (s, value), expected in zip(calls, by_hand):
        param.data.fill_(value)
        updated = ema.step(s)
        assert updated == (expected is not None)
        shadow = float(expected) if expected is not None else shadow
        assert ema.shadow[0].item() == pytest.approx(shadow, rel=1e-6)
    assert ema.current_decay(0) == pytest.approx(0.1) and ema.current_decay(100) == 0.3


def adapted_layers(transformer) -> list[str]:
    return sorted(name for name, module in transformer.named_modules() if hasattr(module, "lora_A"))


def test_lora_targets_the_joint_attention_only_and_the_wider_set_adds_attn2():
    """The tiny SD3 has two blocks, the first with a second (image-only) attention attn2 (as
    SD3.5-M's first 13): the reference's names adapt 8 + 7 joint-attention projections (the last
    block has no to_add_out), the bare names 4 more, those of attn2."""
    from rl.tiny import build_tiny_sd3

    counts = {}
    for name, targets in [("reference", TARGET_MODULES), ("all", ALL_ATTENTION_TARGET_MODULES)]:
        transformer = build_tiny_sd3(seed=0).transformer
        make_trainable(transformer, LoraSettings(rank=2, alpha=4, target_modules=list(targets)))
        counts[name] = adapted_layers(transformer)
    assert len(counts["reference"]) == 15 and not any(".attn2." in n for n in counts["reference"])
    extra = sorted(set(counts["all"]) - set(counts["reference"]))
    assert extra == [
        f"transformer_blocks.0.attn2.{p}" for p in ("to_k", "to_out.0", "to_q", "to_v")
    ]


def test_on_sd35_medium_shapes_the_bare_names_adapt_27_percent_more():
    """Which of SD3.5-M's modules each target list matches, by peft's own rule, on a model built
    on the meta device: 191 joint-attention projections (23 x 8 + 7) against 243 (+13 x 4 of attn2),
    every one a 1536 x 1536 projection, so 27% more LoRA parameters."""
    from diffusers import SD3Transformer2DModel
    from peft import LoraConfig
    from peft.tuners.tuners_utils import check_target_module_exists

    from bench.memory import SD35_MEDIUM_TRANSFORMER

    with torch.device("meta"):
        model = SD3Transformer2DModel(**SD35_MEDIUM_TRANSFORMER)
    linear = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    matched = {}
    for name, targets in [("reference", TARGET_MODULES), ("all", ALL_ATTENTION_TARGET_MODULES)]:
        config = LoraConfig(target_modules=list(targets))
        matched[name] = [n for n in linear if check_target_module_exists(config, n)]
    assert (len(matched["reference"]), len(matched["all"])) == (191, 243)
    assert {tuple(linear[n].weight.shape) for n in matched["all"]} == {(1536, 1536)}
    assert round(len(matched["all"]) / len(matched["reference"]) - 1, 2) == 0.27
