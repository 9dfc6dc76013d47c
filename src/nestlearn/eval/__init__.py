"""Evaluation: language-model bits per byte (``eval.lm``), task metrics (``eval.metrics``) and
continual learning (``eval.continual``: metrics and benchmarks). Submodules are imported explicitly so that the
metrics load without the model code."""
