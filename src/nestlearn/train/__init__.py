"""Training: run config, schedule, the loop, checkpoints, model loading, the metrics log and reports."""

from nestlearn.train.config import RunConfig, TrainConfig, load_run_config
from nestlearn.train.loading import load_model
from nestlearn.train.trainer import Trainer, TrainingDiverged

__all__ = ["RunConfig", "TrainConfig", "Trainer", "TrainingDiverged", "load_model", "load_run_config"]
