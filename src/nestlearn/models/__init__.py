"""Model families; importing this module registers the built-in ones."""

from nestlearn.models.lm import CausalLM, LMConfig, LMOutput, LMState, families, register_family
from nestlearn.models.transformer import TransformerConfig

__all__ = ["CausalLM", "LMConfig", "LMOutput", "LMState", "TransformerConfig", "families", "register_family"]
