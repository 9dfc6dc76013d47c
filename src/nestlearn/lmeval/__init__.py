"""lm-evaluation-harness plugin (optional extra: ``pip install 'nestlearn[lmeval]'``).

Importing this package registers the lm-eval model ``nestlearn`` (:class:`NestlearnLM`, a native
checkpoint) in lm-eval's model registry. The package also declares it under the
``lm_eval.models`` entry-point group, which lm-eval releases with plugin discovery read on their
own; lm-eval 0.4.13 does not, so its command line reaches the model through
``python -m nestlearn.lmeval`` (the ``lm-eval`` command with this package imported and
:data:`TASKS_DIR` on the task path).

:data:`TASKS_DIR` holds offline tasks on the built-in corpora (:mod:`nestlearn.lmeval.data`):
``nestlearn_kjv_bpb`` and ``nestlearn_code_bpb`` (rolling bits per byte per domain, tag
``nestlearn_bpb``) and ``nestlearn_kjv_cloze`` (multiple choice); all three carry the tag ``nestlearn``.
"""

from pathlib import Path

from nestlearn.lmeval.model import MODEL_NAME, NestlearnLM

TASKS_DIR = Path(__file__).parent / "tasks"

__all__ = ["MODEL_NAME", "TASKS_DIR", "NestlearnLM"]
