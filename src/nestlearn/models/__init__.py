"""Model families; importing this module registers the built-in ones."""

from nestlearn.models.lm import CausalLM, LMConfig, LMOutput, LMState, families, register_family
from nestlearn.models.transformer import TransformerConfig
from nestlearn.models.hope_attention import HopeAttentionConfig  # noqa: F401  (registers "hope_attention")
from nestlearn.models.hope import HopeConfig  # noqa: F401  (registers "hope")
from nestlearn.models.titans import TitansConfig  # noqa: F401  (registers "titans")
from nestlearn.models.linear_memory import DeltaNetConfig, GatedDeltaNetConfig, LinearAttentionConfig  # noqa: F401
from nestlearn.models.titans_hybrid import TitansMACConfig, TitansMAGConfig, TitansMALConfig  # noqa: F401
from nestlearn.models.lstm import LSTMConfig  # noqa: F401  (registers "lstm")

__all__ = ["CausalLM", "LMConfig", "LMOutput", "LMState", "TransformerConfig", "families", "register_family"]
