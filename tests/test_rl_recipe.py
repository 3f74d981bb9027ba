"""The recipe differences that were left between rl/ and the reference for SD3.5-M (issue 16,
part 7), each against the reference value: yifan123/flow_grpo at commit ac4c86e (the snapshot the
other reference tests read; ``scripts/train_sd3.py`` line numbers below are its), with the newer
``scripts/train_sd3_fast.py`` and ``scripts/train_sd3.py`` of 74db691 and ``config/grpo.py`` of
54809b5. The reference needs CUDA and the SD3.5-M weights, so its behaviour is recomputed here
independently (float64 where it is arithmetic)."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image
from test_rl_reference import preset
from test_rl_train import TINY, compose_train

import eval.tiif
import rl.algorithms.flow_grpo
import rl.train
from eval.after_checkpoint import hook_generation, run_generation
from eval.checkpoints import evaluate_checkpoints
from rl.config import parse_config
from rl.ema import EMA
from rl.rollout import PromptCache, RolloutConfig, predict_velocity, sample, step_log_prob
from rl.sampler import SamplerConfigError
from rl.tiny import build_tiny_sd3
from rl.train import FlowGRPOTrainer, epoch_plan

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")
FIX = ROOT / "tests" / "fixtures_eval"
TRAIN_SD3 = "yifan123/flow_grpo scripts/train_sd3.py@ac4c86e"
GRPO = "yifan123/flow_grpo config/grpo.py@54809b5"


# ------------------------------------------------------------------ a. EMA


def reference_ema(weights: list[float], micro_per_step: int, decay: float, every: int) -> dict:
    """flow_grpo's EMA as train_sd3.py drives it (lines 444-445, 954-955; flow_grpo/ema.py):
    after every training micro-batch, ``ema.step(params, global_step)`` with global_step = the
    optimizer steps done; an update when (s + 1) % every == 0 with d = min((1 + s) / (10 + s),
    decay). ``weights[s]`` are the parameters after s optimizer steps. Returns, for each s, the
    shadow after the last call that saw s."""
    shadow, after = weights[0], {}
    for micro in range(micro_per_step * (len(weights) - 1)):
        s = (micro + 1) // micro_per_step  # the micro-batch that completes a step counts it
        if (s + 1) % every == 0:
            d = min((1 + s) / (10 + s), decay)
            shadow = shadow + (1 - d) * (weights[s] - shadow)
        after[s] = shadow
    return after


def test_ema_steps_once_per_optimizer_step_as_the_32_gpu_reference_recipe():
    """The reference's 32-GPU SD3.5-M recipes train 4 micro-batches per epoch in 2 optimizer steps
    (config/grpo.py pickscore_sd3: gpu_number 32, train_batch_size 9, K 24, 48 prompts ->
    num_batches_per_epoch 4, gradient_accumulation_steps 2), so each s is seen twice. One event per
    optimizer step with ema.repeat = 2 reproduces that shadow after every step."""
    gen = torch.Generator().manual_seed(0)
    weights = torch.randn(66, generator=gen, dtype=torch.float64).cumsum(0).tolist()
    expected = reference_ema(weights, micro_per_step=2, decay=0.9, every=8)
    param = torch.nn.Parameter(torch.tensor([weights[0]], dtype=torch.float32))
    ema = EMA([param], decay=0.9, update_every=8, repeat=2)
    updates = []
    for s in range(1, len(weights) - 1):
        param.data.fill_(weights[s])
        updates.append(ema.step(s))
        assert ema.shadow[0].item() == pytest.approx(expected[s], rel=1e-6, abs=1e-6), s
    assert sum(updates) == 8  # s = 7, 15, ..., 63
    # At the capped decay an event moves the shadow 1 - 0.9^2 = 19% of the way (the figure)
    param.data.fill_(1.0)
    ema.shadow[0].fill_(0.0)
    ema.step(87)  # (87 + 1) % 8 == 0; the warm-up reaches the cap 0.9 at s = 80
    assert ema.shadow[0].item() == pytest.approx(0.19)


def test_ema_repeat_is_pinned_and_validated():
    cfg = preset("sd35m_pickscore")
    assert (cfg.ema.enabled, cfg.ema.repeat, cfg.ema.update_every) == (True, 2, 8), GRPO
    with pytest.raises(ValueError, match="ema.repeat must be >= 1"):
        EMA([torch.nn.Parameter(torch.zeros(1))], 0.9, 8, repeat=0)


# ------------------------------------------------------------------ b. the CFG uncond gradient


def test_detach_uncond_cuts_only_the_uncond_gradient():
    """ac4c86e (train_sd3.py line 190) detaches noise_pred_uncond before u + g (c - u); 74db691's
    compute_log_prob does not. Same value either way; the gradient with the cut is g x that of the
    cond rows alone, without it (1 - g) x the uncond rows' + g x the cond rows'."""
    transformer = build_tiny_sd3(seed=0).transformer.double()
    params = list(transformer.parameters())
    gen = torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    latents, embeds, pooled = randn(2, 16, 4, 4), randn(2, 12, 96), randn(2, 80)
    neg, neg_pooled = randn(1, 12, 96), randn(1, 80)
    # predict_velocity returns float32: small integer weights keep its float32 backward exact
    weight = torch.randint(-4, 5, (2, 16, 4, 4), generator=gen).double()
    timestep, g = torch.tensor([700.0, 300.0], dtype=torch.float64), 4.5

    def value_and_grads(velocity: torch.Tensor, **kw) -> tuple[float, list[torch.Tensor]]:
        value = (velocity * weight).sum()
        found = torch.autograd.grad(value, params, allow_unused=True, **kw)
        grads = [torch.zeros_like(p) if d is None else d for p, d in zip(params, found)]
        return value.item(), grads

    # one forward over the [uncond; cond] rows as predict_velocity batches them, each half's
    # gradient taken on its own (float64 but for diffusers' RMSNorm, whose variance is float32:
    # the gradient is linear in its upstream to ~1e-7 of its size)
    both = transformer(
        hidden_states=torch.cat([latents, latents]),
        timestep=torch.cat([timestep, timestep]),
        encoder_hidden_states=torch.cat([neg.expand(2, -1, -1), embeds]),
        pooled_projections=torch.cat([neg_pooled.expand(2, -1), pooled]),
        return_dict=False,
    )[0]
    uncond_rows, cond_rows = both.chunk(2)
    _, uncond = value_and_grads(uncond_rows, retain_graph=True)
    _, cond = value_and_grads(cond_rows)
    values = []
    for detach, coef_uncond in [(True, 0.0), (False, 1 - g)]:
        velocity = predict_velocity(transformer, latents, timestep, embeds, pooled, neg,
                                    neg_pooled, g, detach_uncond=detach)  # fmt: skip
        value, got = value_and_grads(velocity)
        values.append(value)
        for d_got, d_uncond, d_cond in zip(got, uncond, cond):
            want = coef_uncond * d_uncond + g * d_cond
            scale = float(want.abs().max())
            torch.testing.assert_close(d_got, want, rtol=0, atol=1e-6 * scale)
    assert values[0] == values[1]  # the cut changes no value
    # the two modes differ by (1 - g) x the uncond rows' gradient, far above that tolerance
    assert max(float(d.abs().max()) for d in uncond) > 1.0


def test_detach_uncond_default_and_plumbing_through_step_log_prob():
    """The default follows ac4c86e, which the reference tests cite; the policy forward of the
    trainer (step_log_prob) passes it on: equal log-probs, different gradients."""
    assert parse_config(compose_train(["data.prompts=[a]"])).train.detach_uncond is True
    pipe = build_tiny_sd3(seed=0)
    cfg = RolloutConfig(num_steps=2, height=32, width=32, max_sequence_length=16)
    cache = PromptCache(pipe, cfg.max_sequence_length)
    rollout = sample(pipe, pipe.transformer, cache, ["a red apple", "a cat"], cfg,
                     torch.Generator().manual_seed(0))  # fmt: skip
    params = [p for p in pipe.transformer.parameters() if p.requires_grad]
    out = {}
    for detach in (True, False):
        log_prob, _, _ = step_log_prob(pipe.transformer, rollout, 0, cache, cfg, detach)
        out[detach] = log_prob.detach(), torch.autograd.grad(log_prob.sum(), params[-1])[0]
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=0)
    assert not torch.allclose(out[True][1], out[False][1])


# ------------------------------------------------------------------ c, d, g: configs


def test_defaults_without_a_preset_are_the_reference_general_configs():
    """conf/train.yaml without a preset: EMA on (config/grpo.py general_ocr_sd3 / geneval_sd3
    train.ema = True; config/base.py has False, which none of the SD3 configs keeps), 9 images per
    sampling batch and per training micro-batch, TF32 on (config/base.py allow_tf32 = True)."""
    cfg = parse_config(compose_train(["data.prompts=[a]"]))
    assert cfg.ema.enabled and cfg.ema.repeat == 2
    assert (cfg.train.batch_size, cfg.train.micro_batch_size) == (9, 9)
    assert cfg.train.allow_tf32 is True
    assert cfg.rollout.eval_num_steps == 40  # config/grpo.py sample.eval_num_steps
    # the demo is a toy, not a recipe: its exported LoRA is its last weights
    assert parse_config(compose_train(["experiment=demo"])).ema.enabled is False


def hook(*overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("checkpoints", overrides=["run_dir=x", "judge=pixel", *overrides])
    return cfg.eval_hook


def test_no_cfg_preset_is_evaluated_at_guidance_1_and_40_steps_at_512_px():
    """config/grpo.py pickscore_sd3_fast_nocfg: sample.eval_guidance_scale = 1, eval_num_steps 40,
    resolution 512 (train_sd3_fast.py at 74db691 samples its eval images with them)."""
    fast_run = run_generation(preset("sd35m_fast_nocfg").rollout)
    fast = hook_generation(hook(), fast_run)
    assert (fast.guidance_scale, fast.num_steps, fast.height, fast.width) == (1.0, 40, 512, 512)
    cfg_run = hook_generation(hook(), run_generation(preset("sd35m_pickscore").rollout))
    assert (cfg_run.guidance_scale, cfg_run.num_steps) == (4.5, 40)  # train_sd3.py eval()
    # a value the hook sets wins; a null without a run is named
    assert (
        hook_generation(hook("eval_hook.generation.guidance_scale=2"), fast_run).guidance_scale == 2
    )
    given = [f"eval_hook.generation.{k}=1" for k in ("num_steps", "guidance_scale")]
    with pytest.raises(ValueError, match=r"generation.height, eval_hook.generation.width, eval_ho"):
        hook_generation(hook(*given), None)


@pytest.mark.parametrize("name", ["sd35m_pickscore", "sd35m_fast_nocfg"])
def test_presets_train_micro_batches_of_the_sampling_batch_as_the_reference(name):
    """config/grpo.py pickscore_sd3 and pickscore_sd3_fast_nocfg: train.batch_size =
    sample.train_batch_size = 9; on 32 GPUs 4 sampling batches per epoch and gradient accumulation
    2. The batch arithmetic closes on 1 to 64 GPUs (powers of 2) and names the numbers on 3."""
    t = preset(name).train
    assert t.batch_size == t.micro_batch_size == 9
    for processes in (1, 2, 4, 8, 16, 32, 64):
        layout, micro_batches = epoch_plan(t, 10_000, processes)
        assert micro_batches == layout.batches_per_epoch == 128 // processes
    layout, micro_batches = epoch_plan(t, 10_000, 32)
    assert (layout.batches_per_epoch, micro_batches // t.optimizer_steps_per_epoch) == (4, 2)
    with pytest.raises(SamplerConfigError, match="1152 images per epoch .* 27 images per batch"):
        epoch_plan(t, 10_000, 3)
    single = preset("sd35m_single_gpu_80gb").train
    assert single.batch_size == single.micro_batch_size == 8


# ------------------------------------------------------------------ e, f, i: one trainer run


def test_trainer_sets_tf32_encodes_outside_autocast_and_evaluates_at_its_own_size(
    tmp_path, monkeypatch
):
    """One epoch of the tiny demo under bf16 autocast (accelerate's CPU autocast) with the epoch
    prompt cache and the eval hook after the epoch, left at the run's own generation settings:
    e. TF32 matmuls on during the run (train_sd3.py lines 449-450), the setting restored after;
    f. every text-encoder forward outside the autocast (compute_text_embeddings runs outside
       ``with autocast()`` in the reference);
    b. the trainer's policy forward passes train.detach_uncond;
    i. the hook generates at the run's 32 px, eval steps and guidance (the tiny model holds 32 px:
       512 px used to fail inside its position embedding)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    autocast_in_encoders, tf32_in_run, detach_seen, gens = [], [], set(), []
    load_pipeline = rl.train.load_pipeline

    def load_recording(model_cfg):
        pipe = load_pipeline(model_cfg)
        for encoder in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
            encoder.register_forward_pre_hook(
                lambda *_: autocast_in_encoders.append(torch.is_autocast_enabled("cpu"))
            )
        pipe.transformer.register_forward_pre_hook(
            lambda *_: tf32_in_run.append(torch.backends.cuda.matmul.allow_tf32)
        )
        return pipe

    def step_log_prob_recording(*args, **kwargs):
        if torch.is_grad_enabled():  # the policy forward (the KL reference's runs without grad)
            detach_seen.add(args[5])
        return step_log_prob(*args, **kwargs)

    run_tiif = eval.tiif.run_tiif

    def run_tiif_recording(pipe, judge, cases, out, name, gen, *rest):
        gens.append(gen)
        return run_tiif(pipe, judge, cases, out, name, gen, *rest)

    monkeypatch.setattr(rl.train, "load_pipeline", load_recording)
    monkeypatch.setattr(rl.algorithms.flow_grpo, "step_log_prob", step_log_prob_recording)
    monkeypatch.setattr(eval.tiif, "run_tiif", run_tiif_recording)
    overrides = [
        *TINY, "train.epochs=1", "log.sample_every_n_epochs=0", "train.mixed_precision=bf16",
        "rollout.prompt_cache=epoch", "rollout.eval_num_steps=3", "eval_hook=tiif_mini",
        "eval_hook.every_n_epochs=1", "eval_hook.judging.answer_mode=yes_prob",
        f"eval_hook.tiif.prompt_dir={FIX / 'tiif_pixel' / 'prompts'}",
        f"eval_hook.tiif.eval_dir={FIX / 'tiif_pixel' / 'eval_prompts'}",
    ]  # fmt: skip
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        FlowGRPOTrainer(parse_config(compose_train(overrides)), tmp_path, raw_config={}).run()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert tf32_in_run and all(tf32_in_run)
    assert torch.backends.cuda.matmul.allow_tf32 is False  # restored
    assert autocast_in_encoders and not any(autocast_in_encoders)
    assert detach_seen == {True}
    (gen,) = gens
    assert (gen.height, gen.width, gen.num_steps, gen.guidance_scale) == (32, 32, 3, 4.5)
    assert gen.max_sequence_length == 32  # the demo's
    (row,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "eval/tiif_short_overall" in row
    image = next((tmp_path / "eval" / "epoch_000001" / "tiif" / "images").rglob("*.png"))
    assert Image.open(image).size == (32, 32)


def test_eval_checkpoints_on_a_tiny_run_generates_at_the_run_size(tmp_path):
    """The reproduction of the issue: eval.checkpoints on a run of the tiny model (32 px), with
    the hook's generation left to the run: it used to ask 512 px and fail with a traceback."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    saved = {"model": {"name": "tiny", "seed": 0, "dtype": "float32"},
             "rollout": {"height": 32, "width": 32, "eval_num_steps": 2, "guidance_scale": 4.5,
                         "max_sequence_length": 32}}  # fmt: skip
    OmegaConf.save(OmegaConf.create(saved), run / ".hydra" / "config.yaml")
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose("checkpoints", overrides=[
            f"run_dir={run}", "judge=pixel", "eval_hook.judging.answer_mode=yes_prob",
            f"eval_hook.tiif.prompt_dir={FIX / 'tiif_pixel' / 'prompts'}",
            f"eval_hook.tiif.eval_dir={FIX / 'tiif_pixel' / 'eval_prompts'}",
        ])  # fmt: skip
    (row,) = evaluate_checkpoints(cfg)
    assert row["epoch"] == 0 and row["eval/tiif_short_coverage"] == 1.0
    image = next((run / "eval_checkpoints" / "epoch_000000" / "tiif" / "images").rglob("*.png"))
    assert Image.open(image).size == (32, 32)
