"""train.compile's regional compilation with inductor on the CPU (gcc builds the kernels): the
compiled rollout matches the eager one with the same weights and noise, the compiled training
forward reproduces the compiled rollout's log-probs, and bench.rollout reports both side by side.

Marked `compile` and left out of the default run: a cold inductor cache costs minutes of
compilation on 2 cores (`make test-compile` runs them; a warm cache, seconds).

Tolerances (float32): latents 1e-4 and log-probs 1e-5, a tenth of Flow-GRPO's clip range 1e-4 on
the ratio exp(log p - log p_old); seen: up to 3e-6 and 2e-7 (inductor fuses and reorders float
ops)."""

import pytest
import torch

from rl.lora import LoraSettings, make_trainable
from rl.models import compile_transformer_blocks
from rl.rollout import PromptCache, RolloutConfig, sample, step_log_prob
from rl.tiny import build_tiny_sd3

pytestmark = pytest.mark.compile

LATENT_TOL, LOG_PROB_TOL = 1e-4, 1e-5


def test_inductor_rollout_and_training_forward_match_eager():
    torch._dynamo.reset()
    pipe = build_tiny_sd3(seed=0)
    transformer = pipe.transformer
    params = make_trainable(transformer, LoraSettings())  # the bench's LoRA: shared graphs
    with torch.no_grad():
        for param in params:  # a LoRA that changes the output, not the zero-init one
            param.normal_(std=0.05, generator=torch.Generator().manual_seed(0))
    cache = PromptCache(pipe, max_sequence_length=128)
    prompts = ["a red cat 0", "a blue car on a street 1"]
    cfg = RolloutConfig(num_steps=2, height=64, width=64)

    def rollout():
        return sample(pipe, transformer, cache, prompts, cfg, torch.Generator().manual_seed(1))

    eager = rollout()
    assert compile_transformer_blocks(transformer) == 2
    compiled = rollout()
    assert (compiled.latents - eager.latents).abs().max() < LATENT_TOL
    assert (compiled.log_probs - eager.log_probs).abs().max() < LOG_PROB_TOL
    log_prob, _, _ = step_log_prob(transformer, compiled, 0, cache, cfg)  # grad mode: new graph
    assert log_prob.requires_grad
    assert (log_prob - compiled.old_log_prob(0)).abs().max() < LOG_PROB_TOL
    torch._dynamo.reset()


def test_bench_reports_inductor_side_by_side(capsys):
    from bench.rollout import main

    torch._dynamo.reset()
    report = main(["--steps", "2", "--repeats", "1", "--batch", "2"])
    assert report["compile_backend"] == "inductor" and report["compile_speedup"] > 0
    assert report["compiled_vs_eager_max_abs_latent"] < LATENT_TOL
    assert report["compiled_vs_eager_max_abs_log_prob"] < LOG_PROB_TOL
    assert report["compiled"]["max_abs_log_ratio"] < LOG_PROB_TOL
    torch._dynamo.reset()
