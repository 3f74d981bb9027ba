"""Evaluation: preference-benchmark accuracy of rewards (``eval.preference``), generation
benchmarks of models and checkpoints (``eval.tiif``, ``eval.unigenbench``), the trainer's
after-checkpoint hook (``eval.after_checkpoint``) and checkpoint sweeps (``eval.checkpoints``).
See docs/evaluation.md."""
