"""Hugging Face ``transformers`` integration (optional extra: ``pip install 'nestlearn[hf]'``).

Importing this package registers every nestlearn model family with ``AutoConfig`` and
``AutoModelForCausalLM`` (``model_type = "nestlearn"``), so a saved folder loads with
``AutoModelForCausalLM.from_pretrained(path)``:

- :class:`NestlearnConfig`, :class:`NestlearnForCausalLM`, :class:`NestlearnCache` (the fast state as
  the generation cache): :mod:`nestlearn.hf.modeling`;
- checkpoint <-> Hugging Face folder conversion (``nestlearn convert``): :mod:`nestlearn.hf.convert`.
"""

from nestlearn.hf.convert import (
           checkpoint_to_hf,
           convert,
           hf_to_checkpoint,
           save_tokenizer,
)
from nestlearn.hf.modeling import (
           NestlearnCache,
           NestlearnConfig,
           NestlearnForCausalLM,
           register,
)

register()

__all__ = ["NestlearnCache", "NestlearnConfig", "NestlearnForCausalLM", "checkpoint_to_hf", "convert",
           "hf_to_checkpoint", "register", "save_tokenizer"]
