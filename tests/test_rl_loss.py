"""The clipped policy loss and the KL term against independent computations."""

import math

import torch
from torch.distributions import Normal, kl_divergence

from rl.loss import grpo_step_loss, kl_to_reference


def test_policy_loss_matches_the_formula_with_clipping_and_advantage_clamp():
    gen = torch.Generator().manual_seed(0)
    old = torch.randn(8, generator=gen, dtype=torch.float64)
    new = old + 0.02 * torch.randn(8, generator=gen, dtype=torch.float64)
    adv = torch.tensor([-9.0, -2, -0.5, 0, 0.5, 2, 7, 1], dtype=torch.float64)
    eps = 0.01
    out = grpo_step_loss(new.float(), old.float(), adv.float(), torch.ones(8), eps, 5.0, beta=0)
    a = adv.clamp(-5, 5)
    ratio = torch.exp(new - old)
    expected = torch.maximum(-a * ratio, -a * ratio.clamp(1 - eps, 1 + eps)).mean()
    assert math.isclose(float(out.loss), float(expected), rel_tol=1e-5)
    assert math.isclose(float(out.clipfrac), float(((ratio - 1).abs() > eps).double().mean()))
    assert math.isclose(float(out.approx_kl), float(0.5 * ((new - old) ** 2).mean()), rel_tol=1e-4)


def test_clipped_samples_get_no_gradient_and_zero_weight_changes_nothing():
    logp = torch.tensor([0.5, 0.0], requires_grad=True)  # ratio e^0.5 is far outside the clip
    out = grpo_step_loss(logp, torch.zeros(2), torch.tensor([1.0, 1.0]), torch.ones(2), 0.1, 5, 0)
    out.loss.backward()
    assert logp.grad[0] == 0 and logp.grad[1] != 0
    padded = grpo_step_loss(
        torch.tensor([0.01, 3.0]), torch.zeros(2), torch.tensor([2.0, -4.0]),
        torch.tensor([1.0, 0.0]), 0.1, 5, 0,
    )  # fmt: skip
    alone = grpo_step_loss(
        torch.tensor([0.01]), torch.zeros(1), torch.tensor([2.0]), torch.ones(1), 0.1, 5, 0
    )
    assert float(padded.loss) == float(alone.loss)


def test_kl_is_the_gaussian_kl_with_dt_and_the_reference_form_without():
    gen = torch.Generator().manual_seed(1)
    mean, ref = torch.randn(3, 4, 2, 2, generator=gen), torch.randn(3, 4, 2, 2, generator=gen)
    std_t = torch.tensor([0.5, 0.7, 0.9]).view(3, 1, 1, 1)
    dt = -0.1
    step_std = (std_t * math.sqrt(-dt)).expand_as(mean)
    exact = kl_divergence(Normal(mean, step_std), Normal(ref, step_std)).flatten(1).mean(1)
    with_dt = kl_to_reference(mean, ref, std_t, dt, include_dt=True)
    torch.testing.assert_close(with_dt, exact)
    without = kl_to_reference(mean, ref, std_t, dt, include_dt=False)
    torch.testing.assert_close(without, exact * -dt)


def test_beta_adds_the_weighted_kl():
    kl = torch.tensor([2.0, 4.0])
    base = grpo_step_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), torch.ones(2), 0.1, 5, 0)
    with_kl = grpo_step_loss(
        torch.zeros(2), torch.zeros(2), torch.ones(2), torch.ones(2), 0.1, 5, 0.5, kl
    )
    assert math.isclose(float(with_kl.loss), float(base.loss) + 0.5 * 3.0)
