"""GRPO-Guard, MixGRPO and DiffusionNFT against their official code, recomputed independently in
float64 (the official trainers need CUDA, SD3.5-M or FLUX weights and their own environments, so
their formulas are restated here line by line, with file, lines and commit):

* GRPO-Guard: X-GenGroup/Flow-Factory ``src/flow_factory/trainers/grpo.py`` (GRPOGuardTrainer,
  lines 500-512) with the Flow-SDE step of
  ``src/flow_factory/scheduler/flow_match_euler_discrete.py`` (lines 343-371), commit
  a0b2bc5a2b4fbf9125429b3fb70c0c5d7631047c;
* MixGRPO: Tencent-Hunyuan/MixGRPO ``fastvideo/utils/grpo_states.py`` (update_iteration, lines
  85-99; get_current_timesteps, lines 141-148), ``fastvideo/train_grpo_flux.py`` (lines 916-928:
  max_timesteps = sampling_steps - 2, 945-947: read, then update) and
  ``fastvideo/utils/sampling_utils.py`` (run_sample_step lines 29-53, dpm solver lines 398-520),
  commit e5cdd6a427778d8c8b2e7a48ce16972141adbe7c;
* DiffusionNFT: NVlabs/DiffusionNFT ``scripts/train_nft_sd3.py`` (return_decay lines 169-189, loss
  lines 908-971, old-policy update lines 1034-1039) and ``config/nft.py``, commit
  24af5554898d85e93efa492f42b5e9cdf4156e9b.
"""

import math

import numpy as np
import pytest
import torch
from test_rl_reference import check, preset
from test_rl_train import TINY, run_training, timing_free

from rl.algorithms import build_algorithm, parse_algorithm
from rl.algorithms.diffusion_nft import (
    OldPolicy,
    implicit_policies,
    nft_loss,
    old_policy_decay,
    optimality_probability,
)
from rl.algorithms.grpo_guard import guard_log_ratio
from rl.algorithms.mixgrpo import MixGRPOSettings
from rl.algorithms.solvers import DPMSolver, first_order_step, second_order_step, time_shift
from rl.config import ConfigError
from rl.loss import grpo_step_loss
from rl.rollout import RolloutConfig
from rl.sde import sde_step

FF = "X-GenGroup/Flow-Factory src/flow_factory/trainers/grpo.py@a0b2bc5"
MIX = "Tencent-Hunyuan/MixGRPO scripts/finetune/finetune_flux_grpo_MixGRPO.sh@e5cdd6a"
MIX_FLASH = "Tencent-Hunyuan/MixGRPO scripts/finetune/finetune_flux_grpo_MixGRPO_Flash.sh@e5cdd6a"
NFT = "NVlabs/DiffusionNFT config/nft.py@24af555"
NFT_BASE = "NVlabs/DiffusionNFT config/base.py@24af555"


# ---------------------------------------------------------------------------------- GRPO-Guard
def official_flow_sde(x, v, sigma, sigma_next, eta, prev=None, noise=None):
    """flow_match_euler_discrete.py's Flow-SDE branch in float64: next, mean, log_prob, std, dt."""
    dt = sigma_next - sigma
    std_dev_t = torch.sqrt(sigma / (1 - sigma)) * eta
    mean = (
        x * (1 + std_dev_t**2 / (2 * sigma) * dt)
        + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    )
    if prev is None:
        prev = mean + std_dev_t * torch.sqrt(-dt) * noise
    std_variance = std_dev_t * torch.sqrt(-dt)
    log_prob = (
        -((prev - mean) ** 2) / (2 * std_variance**2)
        - torch.log(std_variance)
        - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi, dtype=torch.float64)))
    )
    return prev, mean, log_prob.mean(dim=(1, 2, 3)), std_dev_t, dt


@pytest.mark.parametrize("sigma,sigma_next", [(0.9, 0.8), (0.3, 0.2), (0.12, 0.05)])
def test_grpo_guard_ratio_ratio_norm_weights_and_loss_equal_the_official_formula(sigma, sigma_next):
    gen = torch.Generator().manual_seed(int(sigma * 100))
    shape = (6, 4, 8, 8)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    v_old = torch.randn(shape, generator=gen, dtype=torch.float64)
    v_new = v_old + 0.05 * torch.randn(shape, generator=gen, dtype=torch.float64)
    noise = torch.randn(shape, generator=gen, dtype=torch.float64)
    s, s1 = torch.tensor(sigma, dtype=torch.float64), torch.tensor(sigma_next, dtype=torch.float64)
    eta = 0.7
    # the official computation (float64): rollout with the old policy, training forward with the new
    prev, mean_old, logp_old, _, _ = official_flow_sde(x, v_old, s, s1, eta, noise=noise)
    _, mean_new, logp_new, std_dev_t, dt = official_flow_sde(x, v_new, s, s1, eta, prev=prev)
    scale_factor = torch.sqrt(-dt) * std_dev_t  # grpo.py: the per-step weight
    mse = (mean_new - mean_old).flatten(1).pow(2).mean(dim=1)
    ratio = torch.exp((logp_new - logp_old) * scale_factor + mse / (2 * scale_factor))
    adv = torch.tensor([-7.0, -1.5, -0.2, 0.3, 1.0, 6.0], dtype=torch.float64)
    adv = adv.clamp(-5.0, 5.0)
    clip = 1e-3
    official = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()

    # ours, float32, through rl.sde.sde_step exactly as the trainer runs it
    f = torch.float32
    _, lp_old32, m_old32, _ = sde_step(x.to(f), v_old.to(f), sigma, sigma_next, eta,
                                       prev_sample=prev.to(f))  # fmt: skip
    _, lp_new32, m_new32, std32 = sde_step(x.to(f), v_new.to(f), sigma, sigma_next, eta,
                                           prev_sample=prev.to(f))  # fmt: skip
    noise_std = std32 * math.sqrt(sigma - sigma_next)
    log_ratio = guard_log_ratio(lp_new32, lp_old32, m_new32, m_old32, noise_std)
    torch.testing.assert_close(log_ratio.double().exp(), ratio, rtol=2e-5, atol=2e-6)
    # RatioNorm centres the log-ratio: it equals mean((mu_new - mu_old) * eps), eps the noise
    centred = ((mean_new - mean_old) * noise).flatten(1).mean(dim=1)
    torch.testing.assert_close(torch.log(ratio), centred, rtol=1e-9, atol=1e-12)
    out = grpo_step_loss(log_ratio, torch.zeros(6), adv.float(), torch.ones(6), clip, 5.0, 0.0)
    assert math.isclose(float(out.loss), float(official), rel_tol=1e-5, abs_tol=1e-7)
    # on policy the guarded ratio is exactly 1, as Flow-GRPO's
    on_policy = guard_log_ratio(lp_old32, lp_old32, m_old32, m_old32, noise_std)
    assert torch.equal(on_policy, torch.zeros(6))


def test_grpo_guard_records_means_and_refuses_cps():
    guard = build_algorithm(parse_algorithm({"name": "grpo_guard"}), RolloutConfig())
    assert guard.record_means and not guard.trains_zero_advantage
    with pytest.raises(ConfigError, match="grpo_guard needs rollout.sde_kind=sde"):
        preset("demo", "algorithm=grpo_guard", "rollout.sde_kind=cps")


# ---------------------------------------------------------------------------------- MixGRPO
def official_progressive_windows(epochs, iters_per_group, group_size, max_timesteps, step, roll,
                                 strategy="progressive", max_iters=10, min_iters=1):  # fmt: skip
    """GRPOTrainingStates(sample_strategy=strategy, prog_overlap=True) as train_grpo_flux.py
    drives it: each iteration reads get_current_timesteps(), then calls update_iteration()
    (grpo_states.py at e5cdd6a; exp_decay with its defaults threshold 13, k 0.1)."""
    cur, cur_iter, out = 0, 0, []
    for _ in range(epochs):
        out.append(list(range(cur, min(cur + group_size, max_timesteps))))
        cur_iter += 1
        current = iters_per_group
        if strategy == "decay":  # get_dynamic_iters_per_group
            progress = cur / max_timesteps
            current = max(min_iters, int(max_iters * (1 - progress) + min_iters * progress))
        elif strategy == "exp_decay":  # get_exp_decay_iters_per_group
            current = np.ceil(iters_per_group * np.exp(-0.1 * max(0, cur - 13)))
        if cur_iter >= current:
            cur_iter = 0
            cur += step
        if cur > max_timesteps:
            if roll:
                cur, cur_iter = 0, 0
            else:
                cur = max_timesteps
    return out


def mixgrpo_windows(settings: MixGRPOSettings, steps: int, epochs: int) -> list[list[int]]:
    """The steps MixGRPO's window holds in each epoch, as the trainer asks for them ([]: none)."""
    algorithm = build_algorithm(settings, RolloutConfig(num_steps=steps))
    windows = [algorithm.epoch_window(e, torch.Generator()) for e in range(epochs)]
    return [list(range(*(window or (0, 0)))) for window in windows]


@pytest.mark.parametrize(
    "steps,size,iters,shift,roll",
    [(25, 4, 25, 1, True), (25, 4, 20, 1, True), (8, 4, 3, 1, True), (8, 2, 2, 2, False)],
)
def test_mixgrpo_window_per_epoch_is_the_official_progressive_schedule(
    steps, size, iters, shift, roll
):
    settings = MixGRPOSettings(
        window_size=size, iters_per_group=iters, shift_step=shift, roll_back=roll
    )
    epochs = 700 if steps == 25 else 60  # past roll-back for every case
    official = official_progressive_windows(epochs, iters, size, steps - 2, shift, roll)
    ours = mixgrpo_windows(settings, steps, epochs)
    assert ours == official
    if steps == 25 and iters == 25:  # the official run: 300 iterations, windows 0..11, full size
        assert {tuple(w) for w in ours[:300]} == {tuple(range(k, k + 4)) for k in range(12)}


@pytest.mark.parametrize(
    "strategy,steps,iters,roll",
    [("decay", 25, 25, True), ("decay", 10, 5, False), ("exp_decay", 25, 25, True),
     ("exp_decay", 30, 8, True)],
)  # fmt: skip
def test_mixgrpo_decay_strategies_are_the_official_schedules(strategy, steps, iters, roll):
    settings = MixGRPOSettings(iters_per_group=iters, roll_back=roll, strategy=strategy)
    epochs = 400
    official = official_progressive_windows(epochs, iters, 4, steps - 2, 1, roll, strategy)
    ours = mixgrpo_windows(settings, steps, epochs)
    assert ours == official
    starts = [w[0] for w in ours if w]
    assert len(set(starts)) > 5  # the window does move


def test_mixgrpo_random_strategy_draws_one_full_window_per_epoch_from_the_run_generator():
    rollout = RolloutConfig(num_steps=10)
    settings = parse_algorithm({"name": "mixgrpo", "strategy": "random"})
    algo, again = build_algorithm(settings, rollout), build_algorithm(settings, rollout)
    generator, replay = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    windows = []
    for epoch in range(40):
        window = algo.epoch_window(epoch, generator)
        assert algo.epoch_window(epoch, generator) == window  # every batch of the epoch
        assert again.epoch_window(epoch, replay) == window  # the generator fixes it (resume)
        windows.append(window)
    assert windows[0] == (0, 4)  # GRPOTrainingStates starts at cur_timestep 0
    assert all(end - start == 4 and 0 <= start <= 10 - 2 - 4 for start, end in windows)
    assert len(set(windows)) == 5  # every start in [0, 4] drawn


def test_mixgrpo_sde_inside_the_window_ode_elsewhere_and_bad_window_fails_at_start_up():
    rollout = RolloutConfig(num_steps=8)
    algo = build_algorithm(parse_algorithm({"name": "mixgrpo", "iters_per_group": 2}), rollout)
    for epoch, expected in [(0, (0, 4)), (1, (0, 4)), (2, (1, 5)), (9, (4, 6)), (12, None)]:
        window = algo.epoch_window(epoch, torch.Generator())
        assert window == expected  # None: the code's empty window at start == num_steps - 2
        cfg = algo.rollout_config(window)
        sde = [i for i in range(8) if cfg.step_noise_level(i, window) > 0]
        assert sde == list(range(*(expected or (0, 0))))  # SDE exactly inside, ODE elsewhere
        assert algo.train_steps_this_epoch(None) == len(sde)
    with pytest.raises(ConfigError) as err:
        preset("demo_mixgrpo", "algorithm.window_size=7")
    assert "algorithm.window_size=7 must be in 1..num_steps - 2 = 6" in str(err.value)
    with pytest.raises(ConfigError, match="unset rollout.sde_window"):
        preset("demo", "algorithm=mixgrpo")
    with pytest.raises(ConfigError, match="algorithm.strategy='linear' must be one of"):
        preset("demo_mixgrpo", "algorithm.strategy=linear")


def official_dpmpp_first(x, x0, s, t):
    """sampling_utils.py dpm_solver_first_order_update, dpmsolver++, ODE (float64)."""
    alpha_t, alpha_s = 1 - t, 1 - s
    h = (torch.log(alpha_t) - torch.log(t)) - (torch.log(alpha_s) - torch.log(s))
    return (t / s) * x - (alpha_t * (torch.exp(-h) - 1.0)) * x0


def official_dpmpp_second(x, m0, m1, s1, s0, t):
    """multistep_dpm_solver_second_order_update, dpmsolver++ midpoint, ODE (float64)."""
    lam = lambda v: torch.log(1 - v) - torch.log(v)  # noqa: E731
    h, h_0 = lam(t) - lam(s0), lam(s0) - lam(s1)
    d0, d1 = m0, (1.0 / (h_0 / h)) * (m0 - m1)
    return (
        (t / s0) * x
        - (1 - t) * (torch.exp(-h) - 1.0) * d0
        - 0.5 * (1 - t) * (torch.exp(-h) - 1.0) * d1
    )


def test_flash_solver_steps_and_compressed_schedule_equal_the_official_formulas():
    gen = torch.Generator().manual_seed(3)
    x, x0, x0_prev = (torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64) for _ in "abc")
    s1, s0, t = (torch.tensor(v, dtype=torch.float64) for v in (0.8, 0.6, 0.35))
    torch.testing.assert_close(
        first_order_step(x, x0, s0, t).double(), official_dpmpp_first(x, x0, s0, t), rtol=1e-6,
        atol=1e-6,
    )  # fmt: skip
    torch.testing.assert_close(
        second_order_step(x, x0, x0_prev, s1, s0, t).double(),
        official_dpmpp_second(x, x0, x0_prev, s1, s0, t), rtol=1e-6, atol=1e-6,
    )  # fmt: skip
    # the re-spaced schedule of run_sample_step: official sigmas = shift(linspace(1, 0, T + 1))
    steps, shift, ratio = 25, 3.0, 0.4
    sigmas = time_shift(shift, torch.linspace(1, 0, steps + 1, dtype=torch.float64))
    for window in [(0, 4), (5, 9), (11, 15)]:
        last = window[1] - 1  # last_false_index
        n_post = int(max((sigmas.numel() - 1 - last) * ratio, 1))
        post_t = torch.linspace(1, 0, sigmas.numel(), dtype=torch.float64)[last + 1]
        post = time_shift(shift, torch.linspace(float(post_t), 0, n_post, dtype=torch.float64))
        official = torch.cat([sigmas[: last + 1], post])
        solver = DPMSolver(order=2, start=None, post_compress_ratio=ratio, shift=shift)
        run = solver.begin(sigmas[:-1] * 1000, sigmas, window)
        torch.testing.assert_close(run.sigmas, official, rtol=1e-12, atol=1e-12)
        assert run.start == window[1] and run.timesteps.numel() == official.numel() - 1
    # 4 of 8 steps (the demo): 0.4 x 5 rounds to 2 points, one ODE step down to 0
    demo = time_shift(shift, torch.linspace(1, 0, 9, dtype=torch.float64))
    assert float(solver.begin(demo[:-1] * 1000, demo, (0, 4)).sigmas[-1]) == 0.0


def test_mixgrpo_and_nft_presets_are_the_official_values():
    mix = preset("sd35m_mixgrpo")
    check(
        mix,
        {
            "algorithm.name": ("mixgrpo", MIX),
            "algorithm.window_size": (4, f"{MIX} group_size=4"),
            "algorithm.iters_per_group": (25, f"{MIX} iters_per_group=25"),
            "algorithm.shift_step": (1, f"{MIX} prog_overlap_step=1"),
            "algorithm.roll_back": (True, f"{MIX} --roll_back"),
            "algorithm.flash": (False, f"{MIX} dpm_algorithm_type=null"),
            "rollout.num_steps": (25, f"{MIX} sampling_steps=25"),
            "rollout.noise_level": (0.7, f"{MIX} eta=0.7"),
            "rollout.guidance_scale": (1.0, f"{MIX} --cfg 0.0"),
            "train.group_size": (12, f"{MIX} --num_generations 12"),
            "train.learning_rate": (1e-5, f"{MIX} --learning_rate 1e-5"),
            "train.clip_range": (1e-4, f"{MIX} --clip_range 1e-4"),
            "train.adv_clip_max": (5.0, f"{MIX} --adv_clip_max 5.0"),
            "train.beta": (0.0, f"{MIX} kl_coeff=0.0"),
            "train.adam_weight_decay": (1e-4, f"{MIX} --weight_decay 0.0001"),
            "train.max_grad_norm": (1.0, f"{MIX} --max_grad_norm 1.0"),
            "train.same_latent": (True, f"{MIX} --init_same_noise"),
            "train.mixed_precision": ("bf16", f"{MIX} --mixed_precision bf16"),
        },
    )
    flash = preset("sd35m_mixgrpo", "algorithm.flash=true", "algorithm.iters_per_group=20")
    check(
        flash,
        {
            "algorithm.flash_order": (2, f"{MIX_FLASH} dpm_solver_order=2"),
            "algorithm.flash_compress_ratio": (0.4, f"{MIX_FLASH} dpm_post_compress_ratio=0.4"),
            "algorithm.flash_shift": (3.0, f"{MIX_FLASH} --shift 3"),
        },
    )
    nft = preset("sd35m_nft_pickscore")
    source = f"{NFT}:sd3_pickscore"
    check(
        nft,
        {
            "algorithm.name": ("diffusion_nft", source),
            "algorithm.beta": (1.0, f"{NFT} _get_config config.beta = 1.0"),
            "algorithm.decay_type": (1, f"{NFT} _get_config config.decay_type = 1"),
            "algorithm.adv_mode": ("all", f"{NFT} config.train.adv_mode"),
            "algorithm.solver_order": (2, f"{NFT} config.sample.solver = 'dpm2'"),
            "rollout.num_steps": (10, f"{NFT} sample.num_steps"),
            "rollout.guidance_scale": (1.0, f"{NFT} config.sample.guidance_scale = 1.0"),
            "rollout.height": (512, f"{NFT} config.resolution"),
            "rollout.num_train_steps": (9, f"{NFT_BASE} train.timestep_fraction 0.99"),
            "train.group_size": (24, f"{NFT} sample.num_image_per_prompt"),
            "train.groups_per_epoch": (48, f"{NFT} num_groups"),
            "train.optimizer_steps_per_epoch": (1, f"{source} gradient_step_per_epoch=1"),
            "train.beta": (0.0001, f"{NFT} config.train.beta"),
            "train.learning_rate": (3e-4, f"{NFT_BASE} train.learning_rate"),
            "train.adv_clip_max": (5.0, f"{NFT_BASE} train.adv_clip_max"),
            "train.global_std": (True, f"{NFT_BASE} sample.global_std"),
            "train.mixed_precision": ("fp16", f"{NFT_BASE} mixed_precision"),
            "ema.enabled": (True, f"{NFT_BASE} train.ema"),
            "ema.decay": (0.9, "train_nft_sd3.py EMAModuleWrapper(decay=0.9)"),
            "ema.update_every": (1, "train_nft_sd3.py update_step_interval=1"),
            "ema.repeat": (1, "train_nft_sd3.py: ema.step once per optimizer step"),
            "lora.rank": (32, "train_nft_sd3.py LoraConfig(r=32)"),
        },
    )
    ocr = preset("sd35m_nft_pickscore", "algorithm.beta=0.1", "algorithm.decay_type=2")
    assert ocr.algorithm.beta == 0.1 and ocr.algorithm.decay_type == 2  # sd3_ocr


# ---------------------------------------------------------------------------------- DiffusionNFT
def official_return_decay(step, decay_type):
    flat, uprate, uphold = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}[
        decay_type
    ]
    return 0.0 if step < flat else min((step - flat) * uprate, uphold)


def test_nft_old_policy_decay_and_update_equal_return_decay():
    for decay_type in (0, 1, 2):
        for step in (0, 1, 74, 75, 76, 300, 499, 500, 501, 2000):
            assert old_policy_decay(step, decay_type) == official_return_decay(step, decay_type)
    param = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    old = OldPolicy([param])
    with torch.no_grad():
        param.copy_(torch.tensor([3.0, -2.0]))
    old.blend(0.25)  # tgt * decay + src * (1 - decay)
    torch.testing.assert_close(old.shadow[0], torch.tensor([0.25 * 1 + 0.75 * 3, 0.5 - 1.5]))
    with old.swapped_in():
        torch.testing.assert_close(param.detach(), old.shadow[0])
    assert param.tolist() == [3.0, -2.0]


def official_nft_loss(v, v_old, v_ref, x0, xt, t, adv, beta, adv_clip_max, kl_beta, mode="all"):
    """train_nft_sd3.py lines 908-971 in float64; returns (loss, policy_loss, v+, v-, r)."""
    adv_c = torch.clamp(adv, -adv_clip_max, adv_clip_max)
    if mode == "positive_only":
        adv_c = torch.clamp(adv_c, 0, adv_clip_max)
    elif mode == "binary":
        adv_c = torch.sign(adv_c)
    r = torch.clamp((adv_c / adv_clip_max) / 2.0 + 0.5, 0, 1)
    t_e = t.view(-1, 1, 1, 1)
    pos = beta * v + (1 - beta) * v_old
    neg = (1.0 + beta) * v_old - beta * v
    x0_pos = xt - t_e * pos
    w_pos = torch.abs(x0_pos - x0).mean(dim=(1, 2, 3), keepdim=True).clip(min=0.00001)
    pos_loss = ((x0_pos - x0) ** 2 / w_pos).mean(dim=(1, 2, 3))
    x0_neg = xt - t_e * neg
    w_neg = torch.abs(x0_neg - x0).mean(dim=(1, 2, 3), keepdim=True).clip(min=0.00001)
    neg_loss = ((x0_neg - x0) ** 2 / w_neg).mean(dim=(1, 2, 3))
    ori = r * pos_loss / beta + (1.0 - r) * neg_loss / beta
    policy = (ori * adv_clip_max).mean()
    kl = ((v - v_ref) ** 2).mean(dim=(1, 2, 3))
    return policy + kl_beta * kl.mean(), policy, pos, neg, r


@pytest.mark.parametrize("beta,mode", [(1.0, "all"), (0.1, "all"), (0.5, "positive_only"),
                                       (1.0, "binary")])  # fmt: skip
def test_nft_loss_and_implicit_policies_equal_the_official_computation(beta, mode):
    gen = torch.Generator().manual_seed(7)
    shape = (5, 4, 8, 8)
    x0, noise, v_old, v_ref = (torch.randn(shape, generator=gen, dtype=torch.float64)
                               for _ in range(4))  # fmt: skip
    v = v_old + 0.1 * torch.randn(shape, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.95, 0.7, 0.5, 0.3, 0.1], dtype=torch.float64)
    xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
    adv = torch.tensor([-6.0, -1.0, 0.0, 0.7, 3.0], dtype=torch.float64)
    loss, policy, pos, neg, r = official_nft_loss(v, v_old, v_ref, x0, xt, t, adv, beta, 5.0,
                                                  1e-4, mode)  # fmt: skip
    f = torch.float32
    v32 = v.to(f).requires_grad_(True)
    ours = nft_loss(v32, v_old.to(f), x0.to(f), xt.to(f), t.to(f), adv.to(f), torch.ones(5), beta,
                    5.0, mode, 1e-4, v_ref.to(f))  # fmt: skip
    assert math.isclose(float(ours.loss.detach()), float(loss), rel_tol=1e-5)
    assert math.isclose(float(ours.policy_loss), float(policy), rel_tol=1e-5)
    p32, n32 = implicit_policies(v.to(f), v_old.to(f), beta)
    torch.testing.assert_close(p32.double(), pos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(n32.double(), neg, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        optimality_probability(adv.to(f), 5.0, mode).double(), r, rtol=0, atol=1e-7
    )
    # the gradient flows only through v (v_old is detached), and padding (weight 0) changes nothing
    ours.loss.backward()
    assert v32.grad is not None and torch.isfinite(v32.grad).all()
    padded = nft_loss(v.to(f), v_old.to(f), x0.to(f), xt.to(f), t.to(f), adv.to(f),
                      torch.tensor([1.0, 1, 1, 1, 0]), beta, 5.0, mode)  # fmt: skip
    alone = nft_loss(v[:4].to(f), v_old[:4].to(f), x0[:4].to(f), xt[:4].to(f), t[:4].to(f),
                     adv[:4].to(f), torch.ones(4), beta, 5.0, mode)  # fmt: skip
    assert math.isclose(float(padded.loss), float(alone.loss), rel_tol=1e-6)


def test_nft_refuses_cfg_and_windows_and_trains_zero_advantages():
    with pytest.raises(ConfigError, match="diffusion_nft is CFG-free"):
        preset("demo", "algorithm=diffusion_nft", "rollout.sde_window=null")
    with pytest.raises(ConfigError, match="diffusion_nft is CFG-free"):  # Qwen-Image: true CFG
        preset("demo_nft", "model=tiny_qwen_image", "rollout.guidance_scale=4")
    # FLUX's guidance is an embedding's input, no CFG branch: kept
    preset("demo_nft", "model=tiny_flux", "rollout.guidance_scale=3.5")
    with pytest.raises(ConfigError, match="diffusion_nft samples ODE-only"):
        preset("demo_nft", "rollout.sde_window=[0,4]")
    with pytest.raises(ConfigError, match="every image of a group identical"):
        preset("demo_nft", "train.same_latent=true")
    nft = build_algorithm(parse_algorithm({"name": "diffusion_nft"}), RolloutConfig())
    assert nft.trains_zero_advantage and nft.rollout_config(None).noise_level == 0.0
    with pytest.raises(ConfigError, match="algorithm.name='nft' is not one of"):
        preset("demo", "algorithm.name=nft")


# ---------------------------------------------------------------------------------- in the trainer
def tiny(experiment: str, *overrides: str) -> list[str]:
    return [f"experiment={experiment}", *TINY[1:], "log.sample_every_n_epochs=0", *overrides]


def test_guard_and_mixgrpo_flash_train_on_policy_in_the_trainer(tmp_path):
    guard = run_training(tmp_path / "guard", tiny("demo", "algorithm=grpo_guard", "train.epochs=1"))
    assert guard[0]["onpolicy_log_ratio_abs_max"] == 0.0 and guard[0]["optimizer_step"] == 1
    mix = run_training(
        tmp_path / "mix",
        tiny("demo_mixgrpo", "algorithm.window_size=2", "algorithm.iters_per_group=1",
             "algorithm.flash=true", "train.epochs=2"),
    )  # fmt: skip
    assert [r["onpolicy_log_ratio_abs_max"] for r in mix] == [0.0, 0.0]
    assert mix[-1]["optimizer_step"] == 2 and mix[-1]["kept_samples"] > 0


def test_nft_resume_restores_the_old_policy_and_equals_the_straight_run(tmp_path):
    overrides = tiny("demo_nft", "train.learning_rate=1e-2")
    straight = run_training(tmp_path / "straight", [*overrides, "train.epochs=2"])
    run_training(tmp_path / "resumed", [*overrides, "train.epochs=1"])
    resumed = run_training(tmp_path / "resumed", [*overrides, "train.epochs=2", "resume=latest"])
    assert timing_free(resumed) == timing_free(straight)
    assert [r["old_policy_decay"] for r in straight] == [0.001, 0.002]  # decay_type 1
    assert straight[-1]["reward_std"] > 0 and straight[-1]["kept_samples"] == 4


def test_dpm_solver_integrates_a_known_flow_more_accurately_than_euler():
    """For Gaussian data N(0, s^2) the flow ODE is solved exactly: x(sigma) = x(1) m(sigma) with
    m = sqrt((1 - sigma)^2 s^2 + sigma^2). Over SD3's shifted 10-step schedule down to its last
    nonzero sigma, DPM-Solver++(2M) lands far closer than Euler (Flow-GRPO's ODE step). (The last
    step to sigma 0 is first order in both references and returns the data prediction.)"""
    s = 0.5
    sigmas = time_shift(3.0, torch.linspace(1, 0, 11, dtype=torch.float64)).float()
    x1 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))

    def velocity(x, sigma):
        var = (1 - sigma) ** 2 * s**2 + sigma**2
        return (x - (1 - sigma) * s**2 / var * x) / sigma

    run = DPMSolver(order=2, start=0).begin(sigmas[:-1] * 1000, sigmas, None)
    x_dpm, x_euler = x1.clone(), x1.clone()
    for i in range(9):
        x_dpm = run.step(i, x_dpm, velocity(x_dpm, sigmas[i]))
        x_euler = x_euler + velocity(x_euler, sigmas[i]) * (sigmas[i + 1] - sigmas[i])
    exact = x1 * torch.sqrt((1 - sigmas[9]) ** 2 * s**2 + sigmas[9] ** 2)
    dpm_err = float((x_dpm - exact).abs().max())
    euler_err = float((x_euler - exact).abs().max())
    assert dpm_err < 0.3 * euler_err, (dpm_err, euler_err)
    final = run.step(9, x_dpm, velocity(x_dpm, sigmas[9]))  # to sigma 0: the data prediction
    torch.testing.assert_close(final, x_dpm - sigmas[9] * velocity(x_dpm, sigmas[9]))


# ---------------------------------------------------------------------------------- every family
DDP = ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
ZERO2 = ["--config_file", "conf/accelerate/deepspeed_zero2.yaml"]
ACROSS = [
    ("grpo_guard", "tiny_flux", DDP, ["experiment=demo", "algorithm=grpo_guard"]),
    ("mixgrpo", "tiny_qwen_image", DDP, ["experiment=demo_mixgrpo", "algorithm.window_size=2",
                                         "algorithm.iters_per_group=1", "algorithm.flash=true"]),
    # FLUX reads its guidance through an embedding, not a CFG branch: DiffusionNFT keeps it
    ("diffusion_nft", "tiny_flux", DDP, ["experiment=demo_nft", "rollout.guidance_scale=3.5"]),
    ("diffusion_nft", "tiny_qwen_image", DDP, ["experiment=demo_nft"]),
    ("diffusion_nft", "tiny_sd35_large", ZERO2, ["experiment=demo_nft"]),
    ("grpo_guard", "tiny", ZERO2, ["experiment=demo", "algorithm=grpo_guard"]),
    ("mixgrpo", "tiny", ZERO2, ["experiment=demo_mixgrpo"]),
]  # fmt: skip


@pytest.mark.families
@pytest.mark.parametrize("algorithm,model,launcher,overrides", ACROSS)
def test_each_algorithm_trains_the_other_families_on_two_processes(
    tmp_path, algorithm, model, launcher, overrides
):
    """Each algorithm with the families other than SD3.5-M, on 2 CPU processes under DDP or
    DeepSpeed ZeRO-2: two epochs of finite updates, and an exported LoRA that moved away from
    its zero-initialised B."""
    from safetensors.torch import load_file
    from test_rl_scale import ROOT, finish, free_port, launch, rows

    run, ddp = tmp_path / "run", launcher is DDP
    launcher = [str(ROOT / a) if a.endswith(".yaml") else a for a in launcher]
    finish(launch([*launcher, "--num_processes", "2", "--main_process_port", str(free_port()),
                   "-m", "rl.train", *overrides, f"model={model}", "train.epochs=2",
                   "log.sample_every_n_epochs=0", "train.batch_size=4",
                   "train.micro_batch_size=4", "train.group_size=4", "train.groups_per_epoch=2",
                   "train.optimizer_steps_per_epoch=1", f"hydra.run.dir={run}"], tmp_path,
                  cpu=ddp))  # fmt: skip
    metrics = rows(run)
    assert "| 2 processes |" in (run / "train.log").read_text()
    assert [r["optimizer_step"] for r in metrics] == [1, 2]
    assert all(math.isfinite(r["policy_loss"]) for r in metrics)
    assert all(math.isfinite(r["grad_norm"]) for r in metrics) or not ddp  # DeepSpeed: its own
    lora = load_file(run / "lora" / "pytorch_lora_weights.safetensors")
    assert max(float(t.abs().max()) for k, t in lora.items() if "lora_B" in k) > 0
