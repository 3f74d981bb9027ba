"""Every model family through the one trainer: the tiny SD3.5-Large, FLUX.1-dev and Qwen-Image
stand-ins equal their diffusers pipelines, their SDE steps equal independent recomputations of
flow_grpo's samplers, LoRA targets are the reference's, the exported LoRA loads in the family's
pipeline, resume is exact (marker ``families``: ``make test-families``), and a folder of the
wrong family is refused before any weights load.

The reference FLUX sampler (flow_grpo ``flow_grpo/diffusers_patch/flux_pipeline_with_logprob.py``,
with ``compute_log_prob`` of ``scripts/train_flux.py`` at 74db691) cannot run here (it needs
CUDA and FLUX.1-dev); its step is restated below in float64 from its source: sigmas
``linspace(1, 1/T, T)`` shifted by ``mu`` of the packed sequence length, the transformer called
with ``timestep / 1000``, the guidance tensor, zero text ids and the packed latents' image ids,
and ``sde_step_with_logprob``'s mean, std and Gaussian log-density averaged over dimensions.
"""

import math
import shutil

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import FluxPipeline, QwenImagePipeline, StableDiffusion3Pipeline
from test_rl_train import TINY, compose_train, run_training, timing_free

from rl.families import FLUX, QWEN_IMAGE, SD3, family_of, model_spec
from rl.families.flux import build_tiny_flux
from rl.families.qwen_image import build_tiny_qwen_image
from rl.lora import LoraSettings, make_trainable
from rl.models import ModelFolderError, load_pipeline
from rl.rollout import PromptCache, RolloutConfig, sample, step_log_prob
from rl.tiny import build_tiny_sd3

PROMPTS = ["a red cat", "a blue dog on a table"]
SIZE = dict(height=32, width=32)
FLUX_TARGETS = [  # yifan123/flow_grpo scripts/train_flux.py (74db691), in its order
    "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
]  # fmt: skip


QWEN_TARGETS = [  # yifan123/flow_grpo scripts/train_qwenimage_edit_plus.py (9dcdc35)
    "attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0",
    "attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out",
    "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj", "txt_mlp.net.2",
]  # fmt: skip


@pytest.fixture(scope="module")
def flux():
    return build_tiny_flux(seed=0)


@pytest.fixture(scope="module")
def qwen():
    return build_tiny_qwen_image(seed=0)


def diffusers_final_latents(pipe, **kwargs):
    """The pipeline's own sampler: (final latents, images)."""
    final = {}

    def keep(pipe, step, timestep, tensors):
        final["latents"] = tensors["latents"]
        return {}

    images = pipe(callback_on_step_end=keep, output_type="pt", **kwargs).images
    return final["latents"], images


def test_tiny_sd35_large_has_its_block_layout_and_equals_the_sd3_pipeline():
    pipe = load_pipeline({"name": "tiny_sd35_large", "seed": 0})
    names = [n for n, _ in pipe.transformer.named_modules()]
    assert not any(".attn2." in n for n in names)  # no dual-attention (MMDiT-X) block
    assert all(block.attn.norm_q is not None for block in pipe.transformer.transformer_blocks)
    assert family_of(pipe) is SD3 and model_spec("sd35_large").family is SD3
    cfg = RolloutConfig(num_steps=3, noise_level=0.0, max_sequence_length=32, **SIZE)
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    cache = PromptCache(pipe, max_sequence_length=32)
    rollout = sample(pipe, pipe.transformer, cache, PROMPTS, cfg, latents=noise)
    ref, images = diffusers_final_latents(
        pipe, prompt=PROMPTS, num_inference_steps=3, guidance_scale=4.5, latents=noise,
        max_sequence_length=32, **SIZE,
    )  # fmt: skip
    torch.testing.assert_close(rollout.latents[:, -1], ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(rollout.images, images, atol=2e-5, rtol=0)


def test_noise_free_flux_rollout_equals_the_flux_pipeline(flux):
    cfg = RolloutConfig(num_steps=4, guidance_scale=3.5, noise_level=0.0, **SIZE)
    cfg.max_sequence_length = 32
    noise = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    cache = PromptCache(flux, max_sequence_length=32)
    rollout = sample(flux, flux.transformer, cache, PROMPTS, cfg, latents=noise)
    ref, images = diffusers_final_latents(
        flux, prompt=PROMPTS, num_inference_steps=4, latents=noise, max_sequence_length=32,
        **FLUX.pipeline_guidance(3.5, len(PROMPTS)), **SIZE,
    )  # fmt: skip
    assert rollout.latents.shape == (2, 5, 16, 64)  # packed 2x2: (32/8)^2 tokens of 64
    assert torch.equal(rollout.latents[:, -1], ref)
    assert torch.equal(rollout.images, images)
    # no CFG branch: the negative prompt is never encoded
    assert len(cache) == 2 and cache.negative_prompts(3.5) == []


def reference_flux_sigmas(pipe, num_steps, height, width):
    """Sigmas as flow_grpo's FLUX sampler sets them (np.linspace + mu), recomputed by hand."""
    config = pipe.scheduler.config
    tokens = (height // (pipe.vae_scale_factor * 2)) * (width // (pipe.vae_scale_factor * 2))
    slope = (config.max_shift - config.base_shift) / (
        config.max_image_seq_len - config.base_image_seq_len
    )
    mu = config.base_shift + slope * (tokens - config.base_image_seq_len)
    sigmas = np.linspace(1.0, 1 / num_steps, num_steps, dtype=np.float64)
    shifted = math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))  # time_shift, exponential
    return torch.tensor([*shifted, 0.0], dtype=torch.float64)


def test_flux_sde_steps_equal_a_float64_recomputation_of_the_reference(flux):
    cfg = RolloutConfig(num_steps=4, guidance_scale=3.5, noise_level=0.7, **SIZE)
    cfg.max_sequence_length = 32
    cache = PromptCache(flux, max_sequence_length=32)
    rollout = sample(flux, flux.transformer, cache, PROMPTS, cfg, torch.Generator().manual_seed(5))
    sigmas = reference_flux_sigmas(flux, 4, **SIZE)
    torch.testing.assert_close(rollout.sigmas.double(), sigmas, atol=1e-6, rtol=0)
    _, image_ids = flux.prepare_latents(2, 16, 32, 32, torch.float32, "cpu", None)
    embeds, pooled = cache.encode(PROMPTS)
    for step in range(4):
        x, x_next = rollout.latents[:, step], rollout.latents[:, step + 1]
        with torch.no_grad():
            velocity = flux.transformer(
                hidden_states=x, timestep=rollout.timesteps[:, step] / 1000,
                guidance=torch.tensor([3.5]).expand(2), pooled_projections=pooled,
                encoder_hidden_states=embeds, txt_ids=torch.zeros(embeds.shape[1], 3),
                img_ids=image_ids, return_dict=False,
            )[0].double()  # fmt: skip
        s, s_next, x = float(sigmas[step]), float(sigmas[step + 1]), x.double()
        dt = s_next - s
        std_t = 0.7 * math.sqrt(s / (1 - (float(sigmas[1]) if s == 1 else s)))
        mean = x * (1 + std_t**2 / (2 * s) * dt)
        mean = mean + velocity * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
        scale = std_t * math.sqrt(-dt)
        log_prob = torch.distributions.Normal(mean, scale).log_prob(x_next.double())
        torch.testing.assert_close(
            rollout.log_probs[:, step].double(), log_prob.mean(dim=(1, 2)), atol=2e-5, rtol=0
        )
    for position in range(rollout.num_train_steps):  # the training forward is on-policy
        log_prob, _, _ = step_log_prob(flux.transformer, rollout, position, cache, cfg)
        assert torch.equal(log_prob, rollout.old_log_prob(position))


def adapted(transformer):
    return sorted(n for n, m in transformer.named_modules() if hasattr(m, "lora_A"))


def test_flux_lora_targets_are_the_reference_list(flux):
    cfg = compose_train(["model=tiny_flux", "data.prompts=[a]"])
    assert list(cfg.lora.target_modules) == FLUX_TARGETS == list(FLUX.lora_targets)
    transformer = build_tiny_flux(seed=0).transformer
    make_trainable(transformer, LoraSettings(rank=2, alpha=4, target_modules=FLUX_TARGETS))
    names = adapted(transformer)
    # 1 double block: 8 attention + 4 feed-forward projections; 1 single block: to_q/k/v
    assert len(names) == 15
    assert [n for n in names if n.startswith("single")] == [
        f"single_transformer_blocks.0.attn.{p}" for p in ("to_k", "to_q", "to_v")
    ]


def test_a_folder_of_another_family_is_refused_before_loading(flux, tmp_path, monkeypatch):
    folder = tmp_path / "flux"
    flux.save_pretrained(folder)

    def must_not_load(*args, **kwargs):
        raise AssertionError("weights were loaded before the folder check")

    monkeypatch.setattr(StableDiffusion3Pipeline, "from_pretrained", must_not_load)
    with pytest.raises(ModelFolderError, match="a StableDiffusion3Pipeline folder.*FluxPipeline"):
        load_pipeline({"name": "sd35_large", "path": str(folder)})
    monkeypatch.undo()
    shutil.rmtree(folder / "transformer")
    with pytest.raises(ModelFolderError, match="FLUX.1-dev model folder .* missing: transformer/"):
        load_pipeline({"name": "flux_dev", "path": str(folder)})


@pytest.mark.families
@pytest.mark.parametrize(
    "model, build, pipeline_kwargs",
    [
        ("tiny_flux", build_tiny_flux, {"guidance_scale": 3.5}),
        ("tiny_qwen_image", build_tiny_qwen_image, {"true_cfg_scale": 4.0, "negative_prompt": " "}),
    ],
)
def test_training_resumes_exactly_and_its_lora_loads_in_the_pipeline(
    tmp_path, model, build, pipeline_kwargs
):
    overrides = [*TINY, f"model={model}", "log.sample_every_n_epochs=0", "train.batch_size=2",
                 "train.micro_batch_size=2", "rollout.guidance_scale=3.5"]  # fmt: skip
    straight = run_training(tmp_path / "straight", [*overrides, "train.epochs=3"])
    resumed_dir = tmp_path / "resumed"
    run_training(resumed_dir, [*overrides, "train.epochs=2"])
    resumed = run_training(resumed_dir, [*overrides, "train.epochs=3", "resume=latest"])
    assert timing_free(resumed) == timing_free(straight)
    assert straight[0]["onpolicy_log_ratio_abs_max"] == 0.0

    noise = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    kwargs = dict(prompt=PROMPTS, num_inference_steps=4, latents=noise, output_type="pt",
                  max_sequence_length=32, **SIZE, **pipeline_kwargs)  # fmt: skip
    pipe = build(seed=0)
    before = pipe(**kwargs).images
    pipe.load_lora_weights(tmp_path / "straight" / "lora")
    after = pipe(**kwargs).images
    assert (after - before).abs().max() > 1e-3
    card = (tmp_path / "straight/lora/README.md").read_text()
    assert f"{type(pipe).__name__}.from_pretrained" in card


@pytest.mark.parametrize("guidance", [4.0, 1.0])
def test_noise_free_qwen_image_rollout_equals_the_qwen_image_pipeline(qwen, guidance):
    cfg = RolloutConfig(num_steps=3, guidance_scale=guidance, noise_level=0.0, **SIZE)
    cfg.max_sequence_length = 32
    noise = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(0))
    cache = PromptCache(qwen, max_sequence_length=32)
    rollout = sample(qwen, qwen.transformer, cache, PROMPTS, cfg, latents=noise)
    # the keywords with which evaluation calls the pipeline (eval/generation.py)
    cfg_kwargs = QWEN_IMAGE.pipeline_guidance(guidance, len(PROMPTS))
    ref, images = diffusers_final_latents(
        qwen, prompt=PROMPTS, num_inference_steps=3, latents=noise, max_sequence_length=32,
        **cfg_kwargs, **SIZE,
    )  # fmt: skip
    # prompts padded to 32 tokens and masked, [uncond; cond] in one forward: float32 rounding
    torch.testing.assert_close(rollout.latents[:, -1], ref, atol=2e-5, rtol=0)
    torch.testing.assert_close(rollout.images, images, atol=2e-5, rtol=0)
    assert cache.negative_prompts(guidance) == ([" "] if guidance > 1 else [])


def test_evaluation_generates_qwen_image_with_its_true_cfg(qwen, tmp_path):
    """QwenImagePipeline guides through true_cfg_scale with a negative prompt; given only its
    guidance_scale, it samples every guidance as guidance 1 (the same image to the bit)."""
    from eval.generation import GenerationConfig, ImageJob, generate_images

    def generated(guidance: float) -> np.ndarray:
        job = ImageJob(PROMPTS[0], tmp_path / f"g{guidance}.png", "a")
        settings = GenerationConfig(num_steps=2, guidance_scale=guidance, max_sequence_length=32,
                                    **SIZE)  # fmt: skip
        generate_images(qwen, [job], settings)
        return np.asarray(PIL.Image.open(job.path), dtype=np.int16)

    assert np.abs(generated(4.0) - generated(1.0)).max() > 0


def test_qwen_image_sde_steps_equal_a_float64_recomputation_of_the_reference(qwen):
    """flow_grpo's Qwen-Image step (compute_log_prob of train_qwenimage_edit_plus.py): [cond; neg]
    rows padded to their longest prompt with masks, u + g (c - u) rescaled per token to |c|."""
    cfg = RolloutConfig(num_steps=3, guidance_scale=4.0, noise_level=1.2, **SIZE)
    cfg.max_sequence_length = 32
    cache = PromptCache(qwen, max_sequence_length=32)
    rollout = sample(qwen, qwen.transformer, cache, PROMPTS, cfg, torch.Generator().manual_seed(7))
    embeds, mask = qwen.encode_prompt(PROMPTS, max_sequence_length=32)
    neg, neg_mask = qwen.encode_prompt([" ", " "], max_sequence_length=32)
    mask = torch.ones(embeds.shape[:2]) if mask is None else mask
    neg_mask = torch.ones(neg.shape[:2]) if neg_mask is None else neg_mask
    length = max(embeds.shape[1], neg.shape[1])

    def padded(x, m):
        return (torch.nn.functional.pad(x, (0, 0, 0, length - x.shape[1])),
                torch.nn.functional.pad(m, (0, length - m.shape[1])))  # fmt: skip

    (embeds, mask), (neg, neg_mask) = padded(embeds, mask), padded(neg, neg_mask)
    sigmas = rollout.sigmas.double()
    for step in range(3):
        x, x_next = rollout.latents[:, step], rollout.latents[:, step + 1]
        with torch.no_grad():
            out = qwen.transformer(
                hidden_states=torch.cat([x, x]),
                timestep=rollout.timesteps[:, step].repeat(2) / 1000,
                guidance=None, encoder_hidden_states_mask=torch.cat([mask, neg_mask]).bool(),
                encoder_hidden_states=torch.cat([embeds, neg]),
                img_shapes=[[(1, 4, 4)]] * 4, return_dict=False,
            )[0].double()  # fmt: skip
        cond, uncond = out.chunk(2)
        comb = uncond + 4.0 * (cond - uncond)
        velocity = comb * (cond.norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True))
        s, s_next, x = float(sigmas[step]), float(sigmas[step + 1]), x.double()
        dt = s_next - s
        std_t = 1.2 * math.sqrt(s / (1 - (float(sigmas[1]) if s == 1 else s)))
        mean = x * (1 + std_t**2 / (2 * s) * dt)
        mean = mean + velocity * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
        log_prob = torch.distributions.Normal(mean, std_t * math.sqrt(-dt)).log_prob(
            x_next.double()
        )
        torch.testing.assert_close(
            rollout.log_probs[:, step].double(), log_prob.mean(dim=(1, 2)), atol=5e-5, rtol=0
        )
    for position in range(rollout.num_train_steps):
        log_prob, _, _ = step_log_prob(qwen.transformer, rollout, position, cache, cfg)
        assert torch.equal(log_prob, rollout.old_log_prob(position))


def test_qwen_image_lora_targets_are_the_reference_list():
    cfg = compose_train(["model=tiny_qwen_image", "data.prompts=[a]"])
    assert list(cfg.lora.target_modules) == QWEN_TARGETS == list(QWEN_IMAGE.lora_targets)
    transformer = build_tiny_qwen_image(seed=0).transformer
    make_trainable(transformer, LoraSettings(rank=2, alpha=4, target_modules=QWEN_TARGETS))
    assert len(adapted(transformer)) == 12  # one block: 8 attention + 4 feed-forward


def test_every_model_name_builds_or_names_its_folder():
    for name, spec in [("tiny", SD3), ("tiny_sd35_large", SD3), ("tiny_flux", FLUX),
                       ("tiny_qwen_image", QWEN_IMAGE)]:  # fmt: skip
        assert model_spec(name).family is spec and model_spec(name).tiny is not None
    for name in ("sd35_medium", "sd35_large", "flux_dev", "qwen_image"):
        with pytest.raises(ModelFolderError, match="model.path is not set"):
            load_pipeline({"name": name, "path": None})
    assert isinstance(build_tiny_sd3(large=True), StableDiffusion3Pipeline)
    assert isinstance(load_pipeline({"name": "tiny_flux"}), FluxPipeline)
    assert isinstance(load_pipeline({"name": "tiny_qwen_image"}), QwenImagePipeline)


FLUX_GRPO = "yifan123/flow_grpo config/grpo.py:pickscore_flux (31c71b9)"
TRAIN_FLUX = "yifan123/flow_grpo scripts/train_flux.py (74db691)"
FF_SD35 = "X-GenGroup/Flow-Factory examples/grpo/lora/sd3_5/default.yaml (a0b2bc5)"


def test_flux_preset_is_the_reference_pickscore_flux():
    from test_rl_reference import BASE, check, preset

    cfg = preset("flux_dev_pickscore")
    check(
        cfg,
        {
            "model.name": ("flux_dev", f"{FLUX_GRPO} pretrained.model FLUX.1-dev"),
            "model.dtype": ("float32", f"{TRAIN_FLUX} from_pretrained without torch_dtype"),
            "rollout.num_steps": (6, f"{FLUX_GRPO} sample.num_steps"),
            "rollout.guidance_scale": (3.5, f"{FLUX_GRPO} sample.guidance_scale"),
            "rollout.noise_level": (0.9, f"{FLUX_GRPO} sample.noise_level"),
            "rollout.num_train_steps": (5, f"{FLUX_GRPO} timestep_fraction 0.99 x 6"),
            "rollout.height": (512, f"{FLUX_GRPO} resolution"),
            "rollout.max_sequence_length": (128, f"{TRAIN_FLUX} compute_text_embeddings"),
            "train.batch_size": (3, f"{FLUX_GRPO} sample.train_batch_size"),
            "train.micro_batch_size": (3, f"{FLUX_GRPO} train.batch_size"),
            "train.group_size": (24, f"{FLUX_GRPO} sample.num_image_per_prompt"),
            "train.groups_per_epoch": (48, f"{FLUX_GRPO} 48 prompts per epoch"),
            "train.optimizer_steps_per_epoch": (2, f"{FLUX_GRPO} num_batches_per_epoch // 2"),
            "train.learning_rate": (3e-4, f"{BASE} train.learning_rate"),
            "train.clip_range": (1e-4, f"{BASE} clip_range"),
            "train.beta": (0, f"{FLUX_GRPO} train.beta"),
            "train.global_std": (True, f"{FLUX_GRPO} sample.global_std"),
            "train.mixed_precision": ("bf16", f"{FLUX_GRPO} mixed_precision"),
            "lora.rank": (64, f"{TRAIN_FLUX} LoraConfig(r=64)"),
            "lora.alpha": (128.0, f"{TRAIN_FLUX} lora_alpha=128"),
            "lora.target_modules": (FLUX_TARGETS, f"{TRAIN_FLUX} target_modules"),
            "ema.enabled": (True, f"{FLUX_GRPO} train.ema"),
            "ema.decay": (0.9, f"{TRAIN_FLUX} EMAModuleWrapper(decay=0.9)"),
            "ema.update_every": (8, f"{TRAIN_FLUX} update_step_interval=8"),
        },
    )


def test_sd35_large_preset_is_flow_factorys_sd3_5_example_on_the_large_weights():
    from test_rl_reference import REFERENCE_TARGETS, check, preset

    cfg = preset("sd35l_pickscore")
    check(
        cfg,
        {
            "model.name": ("sd35_large", "stable-diffusion-3.5-large via the sd3-5 adapter"),
            "rollout.num_steps": (10, f"{FF_SD35} train.num_inference_steps"),
            "rollout.guidance_scale": (4.5, f"{FF_SD35} train.guidance_scale"),
            "rollout.noise_level": (0.8, f"{FF_SD35} scheduler.noise_level"),
            "rollout.sde_window_size": (2, f"{FF_SD35} scheduler.num_sde_steps"),
            "rollout.sde_window_range": ((1, 6), f"{FF_SD35} scheduler.sde_steps [1..5]"),
            "train.batch_size": (8, f"{FF_SD35} train.per_device_batch_size"),
            "train.group_size": (24, f"{FF_SD35} train.group_size"),
            "train.groups_per_epoch": (48, f"{FF_SD35} train.unique_sample_num_per_epoch"),
            "train.optimizer_steps_per_epoch": (2, f"{FF_SD35} train.gradient_step_per_epoch"),
            "train.learning_rate": (3e-4, f"{FF_SD35} train.learning_rate"),
            "train.clip_range": (1e-4, f"{FF_SD35} train.clip_range"),
            "train.beta": (0, f"{FF_SD35} train.kl_beta"),
            "train.mixed_precision": ("bf16", f"{FF_SD35} mixed_precision"),
            "lora.rank": (32, f"{FF_SD35} model.lora_rank"),
            "lora.alpha": (64.0, f"{FF_SD35} model.lora_alpha"),
            "ema.decay": (0.99, f"{FF_SD35} train.ema_decay"),
            "ema.repeat": (1, "Flow-Factory ema/ema.py EMAModuleWrapper.step: one update"),
        },
    )
    assert sorted(cfg.lora.target_modules) == sorted(REFERENCE_TARGETS)


def test_memory_table_is_computed_from_meta_models():
    from bench.memory import preset_memory

    table = preset_memory("flux_dev_pickscore", processes=8)
    assert table["computed_not_measured"] is True
    assert table["transformer_parameters"] == 11_901_408_320  # FLUX.1-dev's 12B transformer
    # float32 weights (the reference's layout): 4 bytes each
    assert table["per_gpu_gb"]["transformer_weights"] == round(11_901_408_320 * 4 / 1e9, 2)
    # LoRA r64 on train_flux.py's targets; AdamW keeps two float32 moments per parameter
    lora = table["lora_trained_parameters"]
    assert table["per_gpu_gb"]["adamw_states"] == round(8 * lora / 1e9, 2)
    sharded = preset_memory("flux_dev_pickscore", processes=8, zero=2)
    assert sharded["per_gpu_gb"]["adamw_states"] == round(lora / 1e9, 2)
    assert (
        sharded["per_gpu_gb"]["transformer_weights"] == table["per_gpu_gb"]["transformer_weights"]
    )
    # ZeRO-3 shards the frozen base too, and gathers one block (the largest) while it runs
    zero3 = preset_memory("flux_dev_pickscore", processes=8, zero=3)
    assert zero3["per_gpu_gb"]["transformer_weights"] == round(11_901_408_320 * 4 / 8 / 1e9, 2)
    assert 0 < zero3["per_gpu_gb"]["zero3_gathered_block"] < 1.5
    checkpointed = preset_memory(
        "flux_dev_pickscore", overrides=["train.gradient_checkpointing=true"]
    )
    ratio = (
        checkpointed["per_gpu_gb"]["activations_estimate"]
        / table["per_gpu_gb"]["activations_estimate"]
    )
    assert ratio == pytest.approx(2 / 34, rel=0.01)


QWEN_GRPO = "yifan123/flow_grpo config/grpo.py:pickscore_qwenimage (31c71b9)"
TRAIN_QWEN = "yifan123/flow_grpo scripts/train_qwenimage_edit_plus.py (9dcdc35)"


def test_qwen_image_preset_is_the_reference_pickscore_qwenimage():
    from test_rl_reference import BASE, check, preset

    cfg = preset("qwen_image_pickscore")
    check(
        cfg,
        {
            "model.name": ("qwen_image", f"{QWEN_GRPO} pretrained.model Qwen/Qwen-Image"),
            "rollout.num_steps": (10, f"{QWEN_GRPO} sample.num_steps"),
            "rollout.guidance_scale": (4.0, f"{QWEN_GRPO} sample.guidance_scale"),
            "rollout.noise_level": (1.2, f"{QWEN_GRPO} sample.noise_level"),
            "rollout.sde_window_size": (2, f"{QWEN_GRPO} sample.sde_window_size"),
            "rollout.sde_window_range": ((0, 5), f"{QWEN_GRPO} sde_window_range"),
            "rollout.height": (512, f"{QWEN_GRPO} resolution"),
            "train.batch_size": (4, f"{QWEN_GRPO} sample.train_batch_size"),
            "train.micro_batch_size": (4, f"{QWEN_GRPO} train.batch_size"),
            "train.group_size": (16, f"{QWEN_GRPO} sample.num_image_per_prompt"),
            "train.groups_per_epoch": (32, f"{QWEN_GRPO} 32 prompts per epoch"),
            "train.optimizer_steps_per_epoch": (2, f"{QWEN_GRPO} num_batches_per_epoch // 2"),
            "train.learning_rate": (3e-4, f"{BASE} train.learning_rate"),
            "train.beta": (0, f"{QWEN_GRPO} train.beta"),
            "train.global_std": (True, f"{QWEN_GRPO} sample.global_std"),
            "train.mixed_precision": ("bf16", f"{QWEN_GRPO} mixed_precision"),
            "train.gradient_checkpointing": (True, f"{QWEN_GRPO} activation_checkpointing"),
            "lora.rank": (64, f"{TRAIN_QWEN} LoraConfig(r=64)"),
            "lora.alpha": (128.0, f"{TRAIN_QWEN} lora_alpha=128"),
            "lora.target_modules": (QWEN_TARGETS, f"{TRAIN_QWEN} target_modules"),
            "ema.enabled": (False, f"{QWEN_GRPO} train.ema"),
        },
    )


def test_a_disk_cache_file_for_other_prompts_is_not_loaded(tmp_path):
    pipe = build_tiny_sd3(seed=0)
    cache = PromptCache(pipe, max_sequence_length=16)
    assert cache.fill(PROMPTS, tmp_path, {"name": "tiny"}) == "encoded+written"
    (written,) = tmp_path.glob("*.safetensors")
    other = PromptCache(pipe, max_sequence_length=16)
    # the file is untrusted: one holding other prompts under this key is ignored, not read
    assert not other.load(written, ["a green house"]) and len(other) == 0
    assert other.fill(PROMPTS, tmp_path, {"name": "tiny"}) == "disk"
    for prompt in PROMPTS:
        for a, b in zip(cache.encode([prompt]), other.encode([prompt])):
            assert torch.equal(a, b)
