"""Rollouts on the tiny SD3: parity with diffusers' pipeline, on-policy log-prob reproduction,
prompt caching, CFG batching and the fast (windowed) variant, fixed and drawn per batch."""

import pytest
import torch

from rl.rollout import (
    PromptCache,
    Rollout,
    RolloutConfig,
    predict_velocity,
    sample,
    step_log_prob,
)
from rl.tiny import build_tiny_sd3

PROMPTS = ["a red cat", "a blue dog on a table"]
SIZE = dict(height=64, width=64)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_sd3(seed=0)


@pytest.fixture
def cache(pipe):
    return PromptCache(pipe, max_sequence_length=32)


def start_noise(seed=0):
    return torch.randn(2, 16, 16, 16, generator=torch.Generator().manual_seed(seed))


def run_pipeline(pipe, guidance, output_type="pt", **inputs):
    """diffusers' own SD3 sampler; returns (final latents, output)."""
    final = {}

    def keep_latents(pipe, step, timestep, tensors):
        final["latents"] = tensors["latents"]
        return {}

    out = pipe(
        num_inference_steps=4, guidance_scale=guidance, latents=start_noise(),
        max_sequence_length=32, callback_on_step_end=keep_latents, output_type=output_type,
        **SIZE, **inputs,
    ).images  # fmt: skip
    return final["latents"], out


@pytest.mark.parametrize("guidance", [4.5, 1.0])
def test_noise_free_rollout_reproduces_diffusers_pipeline(pipe, cache, guidance):
    cfg = RolloutConfig(num_steps=4, guidance_scale=guidance, noise_level=0.0, **SIZE)
    cfg.max_sequence_length = 32
    rollout = sample(pipe, pipe.transformer, cache, PROMPTS, cfg, latents=start_noise())
    ref_latents, ref_images = run_pipeline(pipe, guidance, prompt=PROMPTS)
    # diffusers encodes the prompts in other batch shapes: agreement to float32 rounding
    torch.testing.assert_close(rollout.latents[:, -1], ref_latents, atol=2e-5, rtol=0)
    torch.testing.assert_close(rollout.images, ref_images, atol=2e-5, rtol=0)
    assert rollout.images.shape == (2, 3, 64, 64)
    assert 0 <= rollout.images.min() and rollout.images.max() <= 1
    if guidance > 1:  # fed the very same embeddings, the two samplers agree bit for bit
        embeds, pooled = cache.encode(PROMPTS)
        neg_embeds, neg_pooled = cache.negative()
        same, _ = run_pipeline(
            pipe, guidance, output_type="latent", prompt_embeds=embeds,
            pooled_prompt_embeds=pooled, negative_prompt_embeds=neg_embeds.expand(2, -1, -1),
            negative_pooled_prompt_embeds=neg_pooled.expand(2, -1),
        )  # fmt: skip
        assert torch.equal(rollout.latents[:, -1], same)


@pytest.mark.parametrize("kind", ["sde", "cps"])
@pytest.mark.parametrize("window", [None, (1, 3)])
def test_training_forward_reproduces_rollout_log_probs(pipe, cache, kind, window):
    cfg = RolloutConfig(num_steps=4, sde_kind=kind, sde_window=window, **SIZE)
    cfg.max_sequence_length = 32
    rollout = sample(pipe, pipe.transformer, cache, PROMPTS, cfg, torch.Generator().manual_seed(3))
    steps = [0, 1, 2, 3][: int(0.99 * 4)] if window is None else [1, 2]
    assert rollout.train_steps.tolist() == [steps, steps]
    assert rollout.log_probs.dtype == torch.float32 and rollout.log_probs.shape == (2, 4)
    for position, step in enumerate(steps):
        log_prob, mean, std = step_log_prob(pipe.transformer, rollout, position, cache, cfg)
        assert log_prob.requires_grad and (std > 0).all()
        assert torch.equal(rollout.old_log_prob(position), rollout.log_probs[:, step])
        assert (log_prob - rollout.log_probs[:, step]).abs().max() < 1e-6  # ratio == 1 on-policy


def test_random_windows_are_drawn_per_batch_and_trained_where_sampled(pipe, cache):
    """The fast variant (flow_grpo sd3_pipeline_with_logprob_fast.py): each batch draws its own
    window; joined batches keep each sample's steps, and the training forward re-scores exactly
    those transitions (on-policy log-probs reproduced), with ODE steps everywhere else."""
    cfg = RolloutConfig(
        num_steps=5, sde_kind="cps", sde_window_size=2, sde_window_range=(0, 4), **SIZE
    )
    cfg.max_sequence_length = 32
    gen = torch.Generator().manual_seed(0)
    windows = [cfg.draw_window(gen) for _ in range(60)]
    assert {w[0] for w in windows} == {0, 1, 2} and all(w[1] - w[0] == 2 for w in windows)
    with pytest.raises(ValueError, match="pass window="):
        sample(pipe, pipe.transformer, cache, PROMPTS, cfg)
    with pytest.raises(ValueError, match=r"window \[3, 5\] is not one"):
        sample(pipe, pipe.transformer, cache, PROMPTS, cfg, window=(3, 5))
    noise = torch.Generator().manual_seed(1)
    batches = [
        sample(pipe, pipe.transformer, cache, PROMPTS, cfg, noise, window=w)
        for w in [(0, 2), (2, 4)]
    ]
    for batch, (start, end) in zip(batches, [(0, 2), (2, 4)]):
        outside = [i for i in range(5) if not start <= i < end]
        assert torch.equal(batch.log_probs[:, outside], torch.zeros(2, 3))
        assert (batch.log_probs[:, start:end] != 0).all()
    joined = Rollout.cat(batches).select([3, 0])  # mixed windows, in another order
    assert joined.train_steps.tolist() == [[2, 3], [0, 1]]
    for position in range(2):
        log_prob, _, _ = step_log_prob(pipe.transformer, joined, position, cache, cfg)
        assert (log_prob - joined.old_log_prob(position)).abs().max() < 1e-6
        expected = [sigma_difference(joined, row, position) for row in (0, 1)]
        assert joined.step_dt(position).tolist() == expected


def sigma_difference(rollout, row, position):
    step = int(rollout.train_steps[row, position])
    return float(rollout.sigmas[step + 1] - rollout.sigmas[step])


def test_window_settings_are_checked():
    with pytest.raises(ValueError, match="not both"):
        RolloutConfig(num_steps=5, sde_window=(1, 3), sde_window_size=2)
    with pytest.raises(ValueError, match="sde_window_range needs rollout.sde_window_size > 0"):
        RolloutConfig(num_steps=5, sde_window_range=(0, 3))
    with pytest.raises(ValueError, match=r"sde_window_size=4 does not fit"):
        RolloutConfig(num_steps=5, sde_window_size=4, sde_window_range=(0, 3))
    with pytest.raises(ValueError, match=r"sde_window_range=\[2, 9\]"):
        RolloutConfig(num_steps=5, sde_window_size=1, sde_window_range=(2, 9))
    fixed = RolloutConfig(num_steps=5, sde_window=(1, 4))
    assert fixed.draw_window(None) == (1, 4) and fixed.num_train_steps == 3


def test_window_variant_is_ode_outside_the_window(pipe, cache):
    cfg = RolloutConfig(num_steps=5, sde_window=(1, 3), **SIZE)
    cfg.max_sequence_length = 32
    a, b = (
        sample(pipe, pipe.transformer, cache, PROMPTS, cfg, torch.Generator().manual_seed(s),
               latents=start_noise())
        for s in (1, 2)
    )  # fmt: skip
    assert a.train_steps.tolist() == [[1, 2], [1, 2]]
    assert torch.equal(a.latents[:, :2], b.latents[:, :2])  # step 0 is deterministic
    assert not torch.allclose(a.latents[:, 2], b.latents[:, 2])  # step 1 draws noise
    assert torch.equal(a.log_probs[:, [0, 3, 4]], torch.zeros(2, 3))
    assert (a.log_probs[:, [1, 2]] != 0).all()
    with pytest.raises(ValueError, match=r"sde_window=\[3, 9\]"):
        RolloutConfig(num_steps=5, sde_window=(3, 9))
    with pytest.raises(ValueError, match=r"sde_window=\[1, 2, 3\]"):
        RolloutConfig(num_steps=5, sde_window=[1, 2, 3])


def test_default_trains_first_nine_of_ten_steps_and_rejects_none():
    assert RolloutConfig().num_train_steps == 9 and RolloutConfig().train_steps(None) == [*range(9)]
    with pytest.raises(ValueError, match="trains no step"):
        RolloutConfig(num_steps=1, train_fraction=0.5)
    with pytest.raises(ValueError, match="sde_kind='ddim'"):
        RolloutConfig(sde_kind="ddim")


def test_prompt_cache_encodes_each_prompt_once(pipe, cache):
    embeds, pooled = cache.encode(["a red cat", "a blue dog", "a red cat"])
    assert cache.num_encoded == 2
    assert torch.equal(embeds[0], embeds[2]) and pooled.shape == (3, 32 + 48)
    cache.encode(["a blue dog"])
    cache.negative()
    cache.negative()
    assert cache.num_encoded == 3
    ref, _, ref_pooled, _ = pipe.encode_prompt(
        "a blue dog", "a blue dog", "a blue dog", do_classifier_free_guidance=False,
        max_sequence_length=32,
    )  # fmt: skip
    torch.testing.assert_close(embeds[1:2], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled[1:2], ref_pooled, atol=1e-5, rtol=0)
    cfg = RolloutConfig(num_steps=2, **SIZE)
    cfg.max_sequence_length = 32
    cache.offload_text_encoders()
    sample(pipe, pipe.transformer, cache, ["a red cat"] * 3, cfg)
    assert cache.num_encoded == 3 and pipe.text_encoder_3.device.type == "cpu"


def test_cfg_batch_equals_two_separate_forwards(pipe, cache):
    embeds, pooled = cache.encode(PROMPTS)
    neg_embeds, neg_pooled = cache.negative()
    x, t = start_noise(), torch.tensor([700.0, 700.0])
    with torch.no_grad():
        velocity = predict_velocity(
            pipe.transformer, x, t, embeds, pooled, neg_embeds, neg_pooled, 4.5
        )
        forward = lambda e, p: pipe.transformer(
            hidden_states=x, timestep=t, encoder_hidden_states=e, pooled_projections=p,
            return_dict=False,
        )[0].double()  # fmt: skip
        cond = forward(embeds, pooled)
        uncond = forward(neg_embeds.expand(2, -1, -1), neg_pooled.expand(2, -1))
        no_cfg = predict_velocity(pipe.transformer, x, t, embeds, pooled, None, None, 1.0)
    torch.testing.assert_close(velocity.double(), uncond + 4.5 * (cond - uncond), atol=1e-5, rtol=0)
    torch.testing.assert_close(no_cfg.double(), cond, atol=1e-6, rtol=0)


def test_rollout_select_cat_to_and_seeding(pipe, cache):
    cfg = RolloutConfig(num_steps=2, **SIZE)
    cfg.max_sequence_length = 32
    a = sample(pipe, pipe.transformer, cache, PROMPTS, cfg, torch.Generator().manual_seed(5))
    b = sample(pipe, pipe.transformer, cache, PROMPTS, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)
    both = Rollout.cat([a, b.select([1])])
    assert both.prompts == PROMPTS + PROMPTS[1:] and both.latents.shape[0] == 3
    assert torch.equal(both.select(torch.tensor([False, False, True])).images, b.images[1:])
    assert torch.equal(both.select(slice(0, 2)).log_probs, a.log_probs)
    assert both.to("cpu").latents.device.type == "cpu"


def test_lora_policy_reproduces_its_log_probs_and_differs_from_reference():
    from peft import LoraConfig

    pipe = build_tiny_sd3(seed=0)
    cache = PromptCache(pipe, max_sequence_length=32)
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_v"]))
    with torch.no_grad():
        for name, param in pipe.transformer.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5, generator=torch.Generator().manual_seed(0))
    cfg = RolloutConfig(num_steps=3, **SIZE)
    cfg.max_sequence_length = 32
    rollout = sample(pipe, pipe.transformer, cache, PROMPTS, cfg, torch.Generator().manual_seed(0))
    log_prob, mean, _ = step_log_prob(pipe.transformer, rollout, 1, cache, cfg)
    assert (log_prob - rollout.log_probs[:, 1]).abs().max() < 1e-6
    pipe.transformer.disable_adapters()  # the KL reference policy
    ref_log_prob, ref_mean, _ = step_log_prob(pipe.transformer, rollout, 1, cache, cfg)
    assert (ref_mean - mean).abs().max() > 1e-3 and not torch.equal(ref_log_prob, log_prob)


def test_prompt_cache_mode_rule_and_whole_data_set_cache(pipe):
    assert RolloutConfig(prompt_cache_max_prompts=3).cache_mode(3) == "all"
    assert RolloutConfig(prompt_cache_max_prompts=3).cache_mode(4) == "epoch"
    assert RolloutConfig(prompt_cache="epoch").cache_mode(1) == "epoch"
    with pytest.raises(ValueError, match="prompt_cache='none'"):
        RolloutConfig(prompt_cache="none")
    cache = PromptCache(pipe, max_sequence_length=32, store_device="cpu")
    cache.encode_all([*PROMPTS, PROMPTS[0], ""])
    assert len(cache) == cache.num_encoded == 3
    assert cache.nbytes == 3 * ((77 + 32) * 96 + 80) * 4  # [L, D] + [P] float32 per prompt
    # a prompt's embedding does not depend on the prompts encoded beside it
    alone = PromptCache(pipe, max_sequence_length=32).encode(PROMPTS[1:])
    assert all(map(torch.equal, alone, cache.encode(PROMPTS[1:])))
    cache.offload_text_encoders()
    with cache.text_encoders_on_device():  # e.g. for an evaluation with the whole pipeline
        assert cache.offloaded and cache.encoder_devices() == {cache.device}
    assert cache.offloaded and cache.encoder_devices() == {torch.device("cpu")}
    assert cache.num_encoded == 3  # the encoders ran only for new prompts
