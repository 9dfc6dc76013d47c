"""Runs several training runs in turn in one torchrun process group (used by test_distributed.py).

Usage: torchrun --standalone --nproc_per_node N tests/distributed_worker.py JOBS.json

JOBS.json is a list of jobs run in order: ``{"overrides": [KEY=VALUE, ...], "resume": RUN_DIR or
null}`` is one :class:`nestlearn.train.Trainer` run; ``{"cli": [ARG, ...]}`` runs ``nestlearn ARG ...``
(which leaves the process group, so it comes last). Starting the processes once and reusing the
group keeps the tests fast: importing torch dominates a short run.
"""

import json
import sys
import warnings

from nestlearn.cli import main as cli_main
from nestlearn.train import Trainer, load_run_config
from nestlearn.train.distributed import shutdown


def main(path: str) -> int:
    warnings.filterwarnings("ignore")
    with open(path, encoding="utf-8") as fh:
        jobs = json.load(fh)
    for job in jobs:
        if "cli" in job:
            status = cli_main(job["cli"])
            if status:
                return status
        else:
            Trainer(load_run_config(None, job["overrides"]), resume=job.get("resume"), progress=False).run()
    shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
