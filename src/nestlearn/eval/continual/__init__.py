"""Continual learning: the metrics over an accuracy matrix and the three benchmarks that produce one.

* :mod:`~nestlearn.eval.continual.metrics`: ACC, BWT, FWT, forgetting and the protocol (tasks.md §9.1);
* :mod:`~nestlearn.eval.continual.mnist`: Split- and Permuted-MNIST with a CMS-level classifier;
* :mod:`~nestlearn.eval.continual.icl`: in-context class-incremental learning for every model family;
* :mod:`~nestlearn.eval.continual.lm`: a language model trained on one text domain after another.

The ``continual`` section of docs/results.md (:mod:`nestlearn.eval.suite.continual`) runs all three.
"""

from nestlearn.eval.continual.metrics import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    continual_summary,
    first_minus_last_forgetting,
    forgetting,
    forward_transfer,
    run_protocol,
)

__all__ = ["average_accuracy", "average_incremental_accuracy", "backward_transfer", "continual_summary",
           "first_minus_last_forgetting", "forgetting", "forward_transfer", "run_protocol"]
