"""sde_step against an independent float64 evaluation of the Flow-GRPO / CPS formulas, and its
noise_level-0 limit against diffusers' own Euler scheduler step."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from rl.sde import sde_step

SHAPE = (3, 4, 5, 6)


def reference_step(x, v, s, s_next, a, eps, kind, sigma_max):
    """Float64, one sample at a time, written from the formulas (not from rl.sde)."""
    x, v, eps = x.double(), v.double(), eps.double()
    dt = s_next - s
    if kind == "sde":
        std_t = a * math.sqrt(s / (1 - (sigma_max if s == 1 else s)))
        mean = x * (1 + std_t**2 * dt / (2 * s)) + v * (1 + std_t**2 * (1 - s) / (2 * s)) * dt
        scale = std_t * math.sqrt(-dt)
        return mean, scale, std_t
    std = s_next * math.sin(a * math.pi / 2)
    x0, x1 = x - s * v, x + (1 - s) * v
    mean = x0 * (1 - s_next) + x1 * math.sqrt(s_next**2 - std**2)
    return mean, std, std


def reference_log_prob(x_next, mean, scale, kind):
    x_next = x_next.double()
    if kind == "sde":
        return torch.distributions.Normal(mean, scale).log_prob(x_next).mean()
    return (-((x_next - mean) ** 2)).mean()


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    sigma = torch.tensor([1.0, 0.8, 0.35])  # per sample, incl. sigma == 1
    sigma_next = torch.tensor([0.9, 0.55, 0.0])  # incl. the last step to 0
    return x, v, sigma, sigma_next


@pytest.mark.parametrize("kind", ["sde", "cps"])
@pytest.mark.parametrize("a", [0.7, 1.0])
def test_drawn_step_matches_float64_formulas(inputs, kind, a):
    x, v, sigma, sigma_next = inputs
    sigma_max = 0.9
    out, log_prob, mean, std = sde_step(
        x,
        v,
        sigma,
        sigma_next,
        a,
        generator=torch.Generator().manual_seed(7),
        kind=kind,
        sigma_max=sigma_max,
    )
    eps = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    assert out.dtype == log_prob.dtype == mean.dtype == torch.float32 and log_prob.shape == (3,)
    for i in range(3):
        ref_mean, scale, ref_std = reference_step(
            x[i], v[i], sigma[i].item(), sigma_next[i].item(), a, eps[i], kind, sigma_max
        )
        ref_next = ref_mean + scale * eps[i].double()
        torch.testing.assert_close(mean[i].double(), ref_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out[i].double(), ref_next, atol=1e-5, rtol=1e-5)
        assert std[i].item() == pytest.approx(ref_std, rel=1e-5)
        if scale > 0:
            ref_lp = reference_log_prob(out[i], ref_mean, scale, kind)
            assert log_prob[i].item() == pytest.approx(ref_lp.item(), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("kind", ["sde", "cps"])
def test_scoring_a_given_outcome_matches_float64_and_has_grad(inputs, kind):
    x, v, sigma, sigma_next = inputs
    x_next = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    v = v.clone().requires_grad_(True)
    out, log_prob, mean, _ = sde_step(
        x, v, sigma, sigma_next, 0.7, prev_sample=x_next, kind=kind, sigma_max=0.9
    )
    assert torch.equal(out, x_next)
    for i in range(2):  # the last sample's CPS std is 0 (sigma_next = 0); skip it for sde parity
        ref_mean, scale, _ = reference_step(
            x[i], v[i].detach(), sigma[i].item(), sigma_next[i].item(), 0.7, x_next[i], kind, 0.9
        )
        ref_lp = reference_log_prob(x_next[i], ref_mean, scale, kind)
        assert log_prob[i].item() == pytest.approx(ref_lp.item(), rel=1e-4, abs=1e-4)
    log_prob.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0


def test_scalar_sigmas_equal_per_sample_tensors(inputs):
    x, v, _, _ = inputs
    scalar = sde_step(x, v, 0.6, 0.4, 0.7, prev_sample=x * 0.9)
    tensor = sde_step(x, v, torch.full((3,), 0.6), torch.full((3,), 0.4), 0.7, prev_sample=x * 0.9)
    for a, b in zip(scalar, tensor):
        torch.testing.assert_close(a, b)


def test_bf16_inputs_are_computed_in_float32(inputs):
    x, v, sigma, sigma_next = inputs
    out, log_prob, mean, _ = sde_step(
        x.bfloat16(), v.bfloat16(), sigma, sigma_next, 0.7, prev_sample=x, sigma_max=0.9
    )
    assert out.dtype == log_prob.dtype == mean.dtype == torch.float32
    ref = sde_step(
        x.bfloat16().float(), v.bfloat16().float(), sigma, sigma_next, 0.7, x, None, sigma_max=0.9
    )
    torch.testing.assert_close(log_prob, ref[1])


def test_sigma_one_without_sigma_max_is_an_error(inputs):
    x, v, sigma, sigma_next = inputs
    with pytest.raises(ValueError, match="sigma_max"):
        sde_step(x, v, sigma, sigma_next, 0.7)
    with pytest.raises(ValueError, match="kind='ddim'"):
        sde_step(x, v, 0.5, 0.4, 0.7, kind="ddim")


@pytest.mark.parametrize("kind", ["sde", "cps"])
def test_noise_level_zero_is_diffusers_euler_step(kind):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(SHAPE, generator=g)
    ours = x.clone()
    for i, t in enumerate(scheduler.timesteps):
        v = torch.randn(SHAPE, generator=g)
        x = scheduler.step(v, t, x, return_dict=False)[0]
        s, s_next = scheduler.sigmas[i], scheduler.sigmas[i + 1]
        ours, log_prob, _, std = sde_step(ours, v, s, s_next, 0.0, kind=kind)
        assert torch.equal(log_prob, torch.zeros(3)) and torch.equal(std.flatten(), torch.zeros(3))
        torch.testing.assert_close(ours, x, atol=1e-6, rtol=0)
