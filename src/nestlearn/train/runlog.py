"""The run's metrics log: JSON lines, TensorBoard scalars, fast-weight norms, resumption after a crash."""

from __future__ import annotations

import json
import math
from pathlib import Path

from nestlearn.errors import ConfigError
from nestlearn.memory import monitor

METRICS = "metrics.jsonl"


class RunLog:
    """The run's metrics: JSON lines in ``metrics.jsonl`` and, optionally, TensorBoard scalars.

    Records with ``loss`` are training steps (TensorBoard tags ``train/loss``, ``train/bpb``,
    ``train/lr``, ...); ``val_*`` fields become ``val/*``. Disabled on every rank but 0.

    Args:
        out: the run folder.
        enabled: write anything at all.
        tensorboard: also write TensorBoard events to ``out/tensorboard``.
        purge_step: on resume, the first step to be rewritten: TensorBoard hides the events a
            crashed run wrote from there on (as :func:`truncate_metrics` drops their JSON lines).
    """

    def __init__(self, out: Path, enabled: bool = True, tensorboard: bool = False, purge_step: int | None = None):
        self.file = open(out / METRICS, "a", encoding="utf-8") if enabled else None
        self.writer = None
        if enabled and tensorboard:
            self.writer = summary_writer_class()(log_dir=str(out / "tensorboard"), purge_step=purge_step)

    def write(self, record: dict) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps(record) + "\n")
        if self.writer is not None:
            step = record["step"]
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    tag = f"val/{key[4:]}" if key.startswith("val_") else f"train/{key}"
                    self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.writer is not None:
            self.writer.close()


def fast_norms(mon: monitor.Monitor) -> dict[str, float]:
    """The largest fast-weight norm of each memory (``fast_norm/<layer>.<memory>``, the maximum over
    its weights) and over all (``fast_norm_max``); empty for a model without fast weights."""
    per: dict[str, float] = {}
    for name, value in mon.largest().items():
        memory = name.rpartition(".")[0]
        per[memory] = max(per.get(memory, 0.0), value)
    if not per:
        return {}
    return {"fast_norm_max": max(per.values()), **{f"fast_norm/{k}": v for k, v in per.items()}}


def eval_record(scores: dict[str, float]) -> dict[str, float]:
    """A validation metrics line: every score with a ``val_`` prefix."""
    return {f"val_{k}": v for k, v in scores.items() if k != "bytes"}


def summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("train.tensorboard", "needs the tensorboard package: pip install 'nestlearn[tensorboard]' "
                          "(or set train.tensorboard: false)") from None
    return SummaryWriter


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after ``step`` (by a run that crashed after its last checkpoint)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    # A process killed mid-write leaves a torn last line, which is dropped like any later line.
    kept = [ln for ln in lines if _record_step(ln) <= step]
    path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")


def _record_step(line: str) -> float:
    """The step of a metrics line; infinity for a line that is not a JSON record (torn by a kill)."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]
