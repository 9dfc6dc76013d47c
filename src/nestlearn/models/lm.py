"""The causal language model every nestlearn model family plugs its block into.

A family is a config dataclass (a subclass of :class:`LMConfig`) registered under a name with
:func:`register_family`; its ``build_block(layer_idx)`` returns one block. A block is an
``nn.Module`` with

    forward(x: (batch, seq, d_model), state: dict[str, Tensor] | None, pos: int, keep_state: bool = True)
        -> (y: (batch, seq, d_model), new_state: dict[str, Tensor])
    init_state(batch_size: int, device, dtype) -> dict[str, Tensor] | None

where ``state`` is the block's fast state (a KV cache, memory weights, momenta, ...). With
``keep_state=False`` the caller discards the new state (training and evaluation from a fresh state
per sequence): the block returns {} and may skip the work only that state needs, such as a memory's
write after the last chunk it reads. Blocks own
their residual connections and norms. After the generic normal initialisation of every
``nn.Linear``/``nn.Embedding``, any submodule with a ``reset_special_parameters()`` method has it
called, so gate biases and meta-learned initial states keep their intended values. :class:`CausalLM` adds the embedding, the final norm, the
head (optionally tied) and the loss, and threads the per-block states through a sequence, so a
stream can be processed segment by segment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from nestlearn.errors import ConfigError, NestlearnError, check_positive
from nestlearn.layers.norm import RMSNorm
from nestlearn.memory import monitor

_FAMILIES: dict[str, type["LMConfig"]] = {}


@dataclass
class LMConfig:
    """Fields shared by every model family.

    Attributes:
        vocab_size: number of token ids; None takes the tokenizer's size.
        d_model: residual-stream width.
        n_layers: number of blocks.
        max_seq_len: longest sequence the model accepts (for attention, cache included).
        tie_embeddings: share the embedding matrix with the output head.
        norm_eps: RMSNorm epsilon.
        init_std: standard deviation of the normal initialisation of linear and embedding weights.
    """

    family: ClassVar[str] = ""
    # Recurrent families process arbitrarily long streams; attention families are bounded.
    bounded_context: ClassVar[bool] = True

    vocab_size: int | None = None
    d_model: int = 256
    n_layers: int = 4
    max_seq_len: int = 512
    tie_embeddings: bool = True
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def validate(self) -> None:
        if self.vocab_size is not None:
            check_positive("model.vocab_size", self.vocab_size)
        check_positive("model.d_model", self.d_model)
        check_positive("model.n_layers", self.n_layers)
        check_positive("model.max_seq_len", self.max_seq_len)
        check_positive("model.norm_eps", self.norm_eps)
        check_positive("model.init_std", self.init_std)

    def build_block(self, layer_idx: int) -> nn.Module:
        raise NotImplementedError

    def sequence_driver(self) -> Any:
        """None, or ``fn(model, tokens, state, targets, learn) -> LMOutput`` that runs a whole call in
        place of the block loop of :meth:`CausalLM.forward`: for a family whose blocks need the
        model's own loss inside the sequence (Hope's CMS with ``cms.signal = "lss"``, D13)."""
        return None


def register_family(name: str):
    """Class decorator: make an :class:`LMConfig` subclass available as ``model.family: name``."""

    def wrap(cls: type[LMConfig]) -> type[LMConfig]:
        cls.family = name
        _FAMILIES[name] = cls
        return cls

    return wrap


def families() -> dict[str, type[LMConfig]]:
    """Registered family name -> config class."""
    import nestlearn.models  # noqa: F401  (registers the built-in families)

    return dict(_FAMILIES)


def model_config_from_dict(data: dict[str, Any], stored: bool = False) -> LMConfig:
    """Build the family config named by ``data["family"]`` from the rest of ``data``; ``stored``: read
    back from a checkpoint, so fields it predates take their legacy values (:func:`nestlearn.config.from_dict`)."""
    from nestlearn.config import from_dict

    data = dict(data)
    name = data.pop("family", "transformer")
    registry = families()
    if not isinstance(name, str) or name not in registry:
        raise ConfigError("model.family", f"must be one of {', '.join(sorted(registry))}, got {name!r}")
    return from_dict(registry[name], data, prefix="model", stored=stored)


def model_config_to_dict(cfg: LMConfig) -> dict[str, Any]:
    from nestlearn.config import to_dict

    return {"family": cfg.family, **to_dict(cfg)}


@dataclass
class LMState:
    """Fast state of a whole model: the absolute position and one dict of tensors per block."""

    pos: int
    layers: list[dict[str, torch.Tensor] | None]

    def detach(self) -> "LMState":
        """Cut the autograd graph between segments (truncated backpropagation, D18)."""
        return LMState(self.pos, [None if s is None else {k: v.detach() for k, v in s.items()} for s in self.layers])

    def flat(self) -> dict[str, torch.Tensor]:
        """``layers.{i}.{name}`` -> tensor, for safetensors."""
        out = {}
        for i, s in enumerate(self.layers):
            for k, v in (s or {}).items():
                out[f"layers.{i}.{k}"] = v
        return out

    @classmethod
    def from_flat(cls, pos: int, n_layers: int, tensors: dict[str, torch.Tensor]) -> "LMState":
        layers: list[dict[str, torch.Tensor] | None] = [None] * n_layers
        for key, value in tensors.items():
            _, idx, name = key.split(".", 2)
            layers[int(idx)] = {**(layers[int(idx)] or {}), name: value}
        return cls(pos, layers)


class LMOutput(NamedTuple):
    """logits: (batch, seq, vocab); loss: mean next-token cross-entropy in nats (None without targets);
    state: the fast state after the sequence (None when the call asked not to keep it)."""

    logits: torch.Tensor
    loss: torch.Tensor | None
    state: LMState | None


class CausalLM(nn.Module):
    """Embedding -> blocks -> RMSNorm -> head.

    Args:
        config: a registered family config with ``vocab_size`` set.
    """

    activation_checkpointing: bool = False
    """Recompute each block's activations during backward instead of storing them (``train.activation_checkpointing``)."""

    def __init__(self, config: LMConfig):
        super().__init__()
        if config.vocab_size is None:
            raise ConfigError("model.vocab_size", "must be set (the trainer takes it from the tokenizer)")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(config.build_block(i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        # Residual-branch outputs scaled by depth (GPT-2) keep the stream's variance O(1) at init.
        for name, p in self.named_parameters():
            if name.endswith((".out.weight", ".down.weight")):
                nn.init.normal_(p, std=config.init_std / math.sqrt(2 * config.n_layers))
        # Parameters with a meaning beyond "a weight" (gate biases, memory initial states) are set by
        # their module after the generic initialisation above.
        for module in self.modules():
            if module is not self and hasattr(module, "reset_special_parameters"):
                module.reset_special_parameters()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def get_output_embeddings(self) -> nn.Module:
        """The output head (the embedding when tied); optimizer routing keeps it out of Muon/M3 (D20)."""
        return self.embed if self.head is None else self.head

    @property
    def head_weight(self) -> torch.Tensor:
        return self.embed.weight if self.head is None else self.head.weight

    def init_state(self, batch_size: int, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> LMState:
        """Initial fast state for ``batch_size`` independent sequences."""
        device = device or self.embed.weight.device
        dtype = dtype or self.embed.weight.dtype
        return LMState(0, [blk.init_state(batch_size, device, dtype) for blk in self.blocks])

    def forward(self, tokens: torch.Tensor, state: LMState | None = None,
                targets: torch.Tensor | None = None, learn: bool = True, keep_state: bool = True) -> LMOutput:
        """tokens: (batch, seq) ids; targets: (batch, seq) ids or None -> :class:`LMOutput`.

        With ``state`` the sequence continues the one that produced it; the returned state continues
        this one. ``learn=False`` marks the tokens as generated: fast weights that learn from the
        model's own next-token loss (``cms.signal = "lss"``) never use them as targets; other
        families ignore it. ``keep_state=False`` returns no state (``state`` None) and lets the
        blocks skip the writes only that state would hold; the logits and the loss are unchanged.
        """
        self.check_tokens(tokens)
        pos = 0 if state is None else state.pos
        if self.config.bounded_context and pos + tokens.shape[1] > self.config.max_seq_len:
            raise NestlearnError(
                f"sequence length {pos + tokens.shape[1]} (cached {pos} + new {tokens.shape[1]}) exceeds "
                f"model.max_seq_len={self.config.max_seq_len}; use a shorter sequence or a model with a larger max_seq_len")
        driver = self.config.sequence_driver()
        if driver is not None:
            out = driver(self, tokens, state, targets, learn)
            return out if keep_state else out._replace(state=None)
        x = self.embed(tokens)
        layer_states = [None] * len(self.blocks) if state is None else state.layers
        new_states = []
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        watched = monitor.active() is not None
        for i, (blk, s) in enumerate(zip(self.blocks, layer_states)):
            with monitor.scope(f"layer{i}") if watched else contextlib.nullcontext():
                if recompute:
                    x, s = checkpoint(blk, x, s, pos, keep_state, use_reentrant=False)
                else:
                    x, s = blk(x, s, pos, keep_state)
            new_states.append(s)
        logits = F.linear(self.norm(x), self.head_weight)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
        return LMOutput(logits, loss, LMState(pos + tokens.shape[1], new_states) if keep_state else None)

    def check_tokens(self, tokens: torch.Tensor, name: str = "tokens") -> None:
        """Raise :class:`NestlearnError` unless ``tokens`` is a (batch, seq) int64 or int32 tensor,
        batch and seq >= 1, of ids in [0, vocab_size).

        The id range is checked on CPU only, outside ``torch.compile``: on an accelerator reading the
        ids' range would synchronise the device on every forward (an out-of-range id then fails in
        the embedding lookup instead)."""
        if not isinstance(tokens, torch.Tensor) or tokens.dtype not in (torch.int64, torch.int32):
            kind = tokens.dtype if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise NestlearnError(f"{name}: must be a tensor of token ids (torch.int64 or torch.int32), got {kind}")
        if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise NestlearnError(f"{name}: must have shape (batch, seq) with batch >= 1 and seq >= 1, "
                                 f"got {tuple(tokens.shape)}")
        if tokens.device.type != "cpu" or torch.compiler.is_compiling():
            return
        low, high = (int(v) for v in torch.aminmax(tokens))
        if low < 0 or high >= self.config.vocab_size:
            bad = low if low < 0 else high
            raise NestlearnError(f"{name}: ids must lie in [0, {self.config.vocab_size - 1}] "
                                 f"(model.vocab_size={self.config.vocab_size}), got {bad}")

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 state: LMState | None = None) -> tuple[torch.Tensor, LMState]:
        """Autoregressive sampling with the fast state as cache.

        Args:
            prompt: (batch, prompt_len) ids, prompt_len >= 1.
            max_new_tokens: number of tokens to append, >= 0.
            temperature: 0 means greedy decoding; finite.
            top_k: sample among the k most likely tokens only, 1 <= k <= vocab_size.
            generator: RNG for sampling.
            state: state to continue from (e.g. a stream already read); None starts fresh.

        A model with a bounded context (softmax attention) that reaches ``max_seq_len`` continues
        with a sliding window: it re-reads the last ``max_seq_len // 2`` tokens with a fresh cache.
        A prompt longer than ``max_seq_len`` is an error. Generated tokens are fed with
        ``learn=False``: fast weights never learn from the model's own samples (D13).

        Returns:
            (batch, prompt_len + max_new_tokens) ids, and the state after the last token.
        """
        if temperature < 0:
            raise ConfigError("temperature", f"must be >= 0, got {temperature}")
        if not math.isfinite(temperature):
            raise ConfigError("temperature", f"must be a finite number >= 0, got {temperature}")
        if top_k is not None and not 0 < top_k <= self.config.vocab_size:
            raise ConfigError("top_k", f"must lie in [1, {self.config.vocab_size}] (the vocabulary), got {top_k}")
        if max_new_tokens < 0:
            raise ConfigError("max_new_tokens", f"must be >= 0, got {max_new_tokens}")
        out = self(prompt, state=state)
        tokens = [prompt]
        logits, state = out.logits[:, -1], out.state
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, generator)
            tokens.append(nxt)
            if i + 1 == max_new_tokens:
                break
            if self.config.bounded_context and state.pos >= self.config.max_seq_len:
                window = torch.cat(tokens, dim=1)[:, -(self.config.max_seq_len // 2):]
                out = self(window, learn=False)
            else:
                out = self(nxt, state=state, learn=False)
            logits, state = out.logits[:, -1], out.state
        return torch.cat(tokens, dim=1), state

    def num_parameters(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if non_embedding else n


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """logits: (batch, vocab) -> (batch, 1) next ids (greedy when temperature == 0)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


def replace_config(cfg: LMConfig, **changes: Any) -> LMConfig:
    """A copy of ``cfg`` with fields changed, validated again."""
    new = dataclasses.replace(cfg, **changes)
    new.validate()
    return new


def match_width(model: dict[str, Any], target: int, step: int = 4, non_embedding: bool = True,
                vocab_size: int = 256) -> tuple[int, int]:
    """The ``d_model`` (a multiple of ``step`` that validates) whose parameter count is nearest ``target``.

    Used to compare families at equal parameters. Counts grow with the width, so the search stops at
    the first width above ``target``.

    Args:
        model: a model config dict without ``d_model`` (``family`` and the other fields).
        target: the parameter count to match.
        non_embedding: count without the embedding (and a tied head), else all parameters.

    Returns:
        (d_model, parameter count).
    """
    best: tuple[int, int] | None = None
    d = step
    while True:
        try:
            cfg = model_config_from_dict({**model, "d_model": d, "vocab_size": vocab_size})
        except ConfigError:
            d += step
            continue
        count = CausalLM(cfg).num_parameters(non_embedding=non_embedding)
        if best is None or abs(count - target) < abs(best[1] - target):
            best = (d, count)
        if count > target:
            return best
        d += step


def match_parameters(model: dict[str, Any], target: int, step: int = 4, hidden_step: int = 4,
                     non_embedding: bool = True, vocab_size: int = 256) -> tuple[dict[str, Any], int]:
    """``model`` at the width of :func:`match_width`, then its MLP hidden width tuned to ``target``.

    The width grid alone leaves counts several percent apart (at d ≈ 100 one step of 4 changes the
    count by about 7 %); the hidden width, in steps of ``hidden_step``, closes that to a fraction of a
    percent. The tuned field is the family's ``ffn_hidden`` (SwiGLU families) or ``cms.hidden`` (CMS
    families without one); a family with neither keeps the width's count.

    Returns:
        (the model config dict with ``d_model`` and the tuned field set, its parameter count).
    """
    d, count = match_width(model, target, step, non_embedding, vocab_size)
    model = {**model, "d_model": d}
    cfg = model_config_from_dict({**model, "vocab_size": vocab_size})
    if hasattr(cfg, "ffn_hidden"):
        def with_hidden(h: int) -> dict[str, Any]:
            return {**model, "ffn_hidden": h}
    elif hasattr(cfg, "cms"):
        def with_hidden(h: int) -> dict[str, Any]:
            return {**model, "cms": {**model.get("cms", {}), "hidden": h}}
    else:
        return model, count

    def counted(h: int) -> int:
        cfg = model_config_from_dict({**with_hidden(h), "vocab_size": vocab_size})
        return CausalLM(cfg).num_parameters(non_embedding=non_embedding)

    # The count is affine in the hidden width: solve for it, then check the grid points around.
    low, high = counted(hidden_step), counted(2 * hidden_step)
    guess = max(1, round((target - low) / (high - low) + 1)) * hidden_step
    candidates = {h: counted(h) for h in (guess - hidden_step, guess, guess + hidden_step) if h > 0}
    h = min(candidates, key=lambda h: abs(candidates[h] - target))
    return with_hidden(h), candidates[h]
