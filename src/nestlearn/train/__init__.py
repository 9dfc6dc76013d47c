"""Training: run config, the loop, checkpoints and reports."""

from nestlearn.train.config import RunConfig, TrainConfig, load_run_config
from nestlearn.train.trainer import Trainer, load_model

__all__ = ["RunConfig", "TrainConfig", "Trainer", "load_model", "load_run_config"]
