"""Every nestlearn model family as a Hugging Face ``transformers`` causal language model.

One config class and one model class serve all families: :class:`NestlearnConfig` holds the
nestlearn model config (``family`` plus that family's fields) and :class:`NestlearnForCausalLM`
builds the :class:`~nestlearn.models.lm.CausalLM` it describes. Both are registered with
``AutoConfig`` / ``AutoModelForCausalLM`` under ``model_type = "nestlearn"`` when this module is
imported.

The generation cache is :class:`NestlearnCache`: it holds the model's whole fast state
(:class:`~nestlearn.models.lm.LMState`: memories, momenta, CMS levels, the attention KV cache of
hybrid and attention families, the stream position), so each decoding step feeds only the new token
and a recurrent family costs the same per token at any context length.

Tested with transformers 4.57.3, 5.23.0 and 5.25.0. The cache is a ``transformers.Cache`` subclass passed
as ``past_key_values``; ``generate`` does not create one (``_supports_default_dynamic_cache`` is
False), the first forward call does. The model is marked stateful: transformers then refuses assisted
decoding, whose rollback a recurrent state cannot do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

try:
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        GenerationMixin,
        PretrainedConfig,
        PreTrainedModel,
    )
    from transformers.cache_utils import Cache
    from transformers.modeling_outputs import CausalLMOutputWithPast
except ImportError:  # pragma: no cover - exercised only without the optional extra
    raise ImportError("nestlearn.hf needs the package transformers: pip install 'nestlearn[hf]'") from None

from nestlearn.errors import ConfigError, NestlearnError
from nestlearn.models.lm import (
    CausalLM,
    LMState,
    model_config_from_dict,
    model_config_to_dict,
)

MODEL_TYPE = "nestlearn"
# transformers 5.24 renamed the output field past_key_values to cache and warns whenever the old
# name is used; the cache goes into whichever field this version declares.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class NestlearnConfig(PretrainedConfig):
    """A nestlearn model config in Hugging Face form.

    Args:
        nestlearn_model: the nestlearn model config as a dict (``{"family": "hope", "d_model": ...}``,
            as in a run config's ``model`` section); ``vocab_size`` must be set. Validated and stored
            with every field filled in.
        nestlearn_tokenizer: the tokenizer description of the run (``{"kind": "byte", ...}``), if known.
        nestlearn_run: what a nestlearn checkpoint records besides the model (the run config's other
            sections, step, data fingerprint), kept so a converted model converts back unchanged.

    The standard attributes (``vocab_size``, ``hidden_size``, ``num_hidden_layers`` and, for families
    with a bounded context, ``max_position_embeddings``) are derived from ``nestlearn_model``.
    ``tie_word_embeddings`` is always False for transformers: :class:`CausalLM` ties internally
    (there is no separate head tensor to tie).
    """

    model_type = MODEL_TYPE

    def __init__(self, nestlearn_model: dict[str, Any] | None = None, nestlearn_tokenizer: dict[str, Any] | None = None,
                 nestlearn_run: dict[str, Any] | None = None, **kwargs: Any):
        cfg = model_config_from_dict(nestlearn_model or {"vocab_size": 256})
        if cfg.vocab_size is None:
            raise ConfigError("model.vocab_size", "must be set for a Hugging Face model (the tokenizer's size)")
        for derived in ("vocab_size", "hidden_size", "num_hidden_layers", "max_position_embeddings"):
            kwargs.pop(derived, None)
        kwargs["tie_word_embeddings"] = False
        super().__init__(**kwargs)
        self.nestlearn_model = model_config_to_dict(cfg)
        self.nestlearn_tokenizer = nestlearn_tokenizer
        self.nestlearn_run = nestlearn_run
        self.vocab_size = cfg.vocab_size
        self.hidden_size = cfg.d_model
        self.num_hidden_layers = cfg.n_layers
        if cfg.bounded_context:
            self.max_position_embeddings = cfg.max_seq_len

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        """How transformers reads a saved folder's config.json: its model section as it was trained, so a
        field it predates takes its legacy value, not today's default (design.md S12)."""
        model = config_dict.get("nestlearn_model")
        if isinstance(model, dict):
            config_dict = {**config_dict, "nestlearn_model": model_config_to_dict(model_config_from_dict(model, stored=True))}
        return super().from_dict(config_dict, **kwargs)


class NestlearnCache(Cache):
    """The fast state of a nestlearn model as a ``transformers`` cache.

    Args:
        state: the state to continue from (e.g. one read with :func:`nestlearn.stateful.learn`);
            None starts a fresh sequence.

    To generate after a state of ``state.pos`` tokens, pass it with the new prompt and, following
    transformers 5.x's convention for a filled cache, an attention mask covering both:
    ``generate(prompt, cache=NestlearnCache(state), attention_mask=torch.ones(batch,
    state.pos + prompt_len, dtype=torch.long))`` (``past_key_values=`` before transformers 5.24,
    the name :data:`CACHE_FIELD` holds).

    ``generate`` passes it between steps as ``cache`` (``past_key_values``); the model replaces ``state`` after
    every forward call. For families with a bounded context it also keeps the last
    ``max_seq_len`` token ids, so decoding past ``max_seq_len`` continues with the sliding window of
    :meth:`CausalLM.generate`. Beam search reorders it along the batch axis; it cannot be cropped
    (a memory that has learned from a token cannot unlearn it).
    """

    is_compileable = False

    def __init__(self, state: LMState | None = None):
        super().__init__(layers=[])
        self.state = state
        self.recent: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"NestlearnCache(pos={self.get_seq_length()}, batch={self.batch_size})"

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.state is None else self.state.pos

    def get_max_length(self, layer_idx: int | None = None) -> int:
        return -1

    @property
    def batch_size(self) -> int:
        for layer in self.state.layers if self.state is not None else ():
            for tensor in (layer or {}).values():
                return tensor.shape[0]
        return -1

    @property
    def is_croppable(self) -> bool:
        return False

    @property
    def is_initialized(self) -> bool:
        return self.state is not None

    def _map_batch(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Apply ``fn`` to every state tensor (batch axis first) and to the recent ids."""
        if self.state is not None:
            self.state = LMState(self.state.pos, [None if s is None else {k: fn(v) for k, v in s.items()}
                                                  for s in self.state.layers])
        if self.recent is not None:
            self.recent = fn(self.recent)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda t: t[indices.to(t.device)])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove == 0:
            return
        raise NestlearnError("a nestlearn cache cannot be cropped: the fast memories have already learned from "
                             "those tokens (use generation without assistant models or rollback)")

    def reset(self) -> None:
        self.state = None
        self.recent = None


class NestlearnForCausalLM(PreTrainedModel, GenerationMixin):
    """A nestlearn :class:`CausalLM` (any registered family) behind the ``transformers`` model API.

    ``forward(input_ids, past_key_values, labels)`` returns ``CausalLMOutputWithPast`` whose
    ``past_key_values`` is a :class:`NestlearnCache`; ``generate`` (greedy, sampling, beam search)
    feeds one new token per step. Sequences cannot be padded: every token is written into the
    memories, so a batch holds prompts of equal length (``attention_mask`` must be all ones).
    The wrapped native model is ``self.model``.
    """

    config_class = NestlearnConfig
    main_input_name = "input_ids"
    _is_stateful = True
    _supports_cache_class = True
    _no_split_modules: ClassVar[list[str]] = []

    def __init__(self, config: NestlearnConfig):
        super().__init__(config)
        self.model = CausalLM(model_config_from_dict(config.nestlearn_model))
        self.post_init()

    @classmethod
    def from_native(cls, model: CausalLM, tokenizer_description: dict[str, Any] | None = None,
                    run: dict[str, Any] | None = None) -> NestlearnForCausalLM:
        """Wrap a copy of the weights of a native ``model`` (with its tokenizer description and run record)."""
        config = NestlearnConfig(nestlearn_model=model_config_to_dict(model.config),
                                 nestlearn_tokenizer=tokenizer_description, nestlearn_run=run)
        hf = cls(config)
        hf.model.load_state_dict(model.state_dict())
        return hf.to(next(model.parameters()).device).train(model.training)

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Nothing to do: :class:`CausalLM` initialises itself (including its special parameters)."""

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate must not create a DynamicCache: the first forward call creates a NestlearnCache.
        return False

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.embed

    def get_output_embeddings(self) -> None:
        # The head is the embedding when tied and the CausalLM's own Linear otherwise; it is not
        # exposed so transformers never re-ties or resizes it behind the native model's back.
        return None

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values: Cache | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, inputs_embeds: torch.Tensor | None = None,
                return_dict: bool | None = None, cache: Cache | None = None, **kwargs: Any) -> CausalLMOutputWithPast | tuple:
        """input_ids: (batch, seq) -> logits (batch, seq, vocab), the cache and, with labels, the loss.

        Args:
            input_ids: (batch, seq) token ids; with a non-empty cache, the tokens that follow it.
            attention_mask: (batch, past + seq), all ones (padding is not supported).
            past_key_values: a :class:`NestlearnCache` to continue, or None for a fresh sequence.
            labels: (batch, seq) ids, shifted inside as in transformers (position t predicts labels[t+1]);
                -100 is ignored.
            use_cache: return the cache (default True).
            cache: the name transformers 5.24 and later give ``past_key_values``; either may be passed.
        """
        if inputs_embeds is not None:
            raise ConfigError("inputs_embeds", "is not supported by nestlearn models; pass input_ids")
        if input_ids is None:
            raise ConfigError("input_ids", "is required")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ConfigError("attention_mask", "must be all ones: nestlearn models write every token into their "
                              "memories, so padding is not supported; batch prompts of equal length")
        cache = cache if cache is not None else past_key_values
        if cache is not None and not isinstance(cache, NestlearnCache):
            if cache.get_seq_length() > 0:
                raise ConfigError("past_key_values", f"must be a NestlearnCache, got a filled {type(cache).__name__}")
            cache = None
        state = cache.state if cache is not None else None
        cfg = self.model.config
        if (cfg.bounded_context and state is not None and cache.recent is not None and input_ids.shape[1] == 1
                and state.pos + 1 > cfg.max_seq_len):
            # The attention cache is full: re-read the last max_seq_len // 2 tokens with a fresh cache,
            # exactly as CausalLM.generate does.
            window = torch.cat([cache.recent, input_ids], dim=1)[:, -(cfg.max_seq_len // 2):]
            out = self.model(window)
            logits = out.logits[:, -1:]
        else:
            out = self.model(input_ids, state=state)
            logits = out.logits
        if use_cache is None:
            use_cache = getattr(self.config, "use_cache", True)
        if use_cache:
            cache = cache if cache is not None else NestlearnCache()
            if cfg.bounded_context:
                recent = input_ids if cache.recent is None else torch.cat([cache.recent, input_ids], dim=1)
                cache.recent = recent[:, -cfg.max_seq_len:]
            cache.state = out.state
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        output = CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_FIELD: cache if use_cache else None})
        return output if return_dict is not False else output.to_tuple()


def register() -> None:
    """Register ``model_type = "nestlearn"`` with ``AutoConfig`` and ``AutoModelForCausalLM`` (idempotent).

    Importing :mod:`nestlearn.hf` calls it; call it again only if another library replaced the entries.
    """
    AutoConfig.register(MODEL_TYPE, NestlearnConfig, exist_ok=True)
    AutoModelForCausalLM.register(NestlearnConfig, NestlearnForCausalLM, exist_ok=True)
