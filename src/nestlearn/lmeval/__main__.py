"""``python -m nestlearn.lmeval ARGS``: lm-eval's own command line with the ``nestlearn`` model registered.

The arguments are lm-eval's (``run``, ``ls``, ``validate`` or the legacy form without a subcommand).
Unless ``--include_path`` is given, the shipped tasks (:data:`nestlearn.lmeval.TASKS_DIR`) are added
to the task path.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from lm_eval.__main__ import cli_evaluate

    from nestlearn.lmeval import TASKS_DIR

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in ("-h", "--help") and not any(a.split("=", 1)[0] == "--include_path" for a in args):
        args += ["--include_path", str(TASKS_DIR)]
    sys.argv = ["lm-eval", *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
