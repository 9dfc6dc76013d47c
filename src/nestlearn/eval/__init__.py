"""Evaluation."""

from nestlearn.eval.lm import evaluate_bpb

__all__ = ["evaluate_bpb"]
