"""Ad-hoc level stacking: a trained Transformer++ becomes a Hope-Attention model (NL-L §7.3, spec §6.4).

MLP_0^{(f_i)} := MLP_pretrained_i, then Eq 71 updates the levels. Mapping (D17,
``cms.level_assignment = "depth_groups"``): every layer keeps its own pre-trained SwiGLU MLP as the
initial state of its one CMS level, in the SwiGLU form (D15, ``cms.level_form = "swiglu"``), and the
layers are cut into contiguous depth groups, one per entry of ``cms.chunk_sizes``, shallow layers
slowest (:func:`nestlearn.layers.cms.depth_group_chunk_sizes`). The block's ``mlp_norm`` gain becomes
the level's norm gain, so F(x) = x + SwiGLU(RMSNorm(x)) is the Transformer++ MLP sub-layer exactly,
and with ``cms.eta_max = 0`` the stacked model computes the original model's logits bit for bit.
Embeddings, attention, norms and head are copied. The slow parameters a Transformer has no
counterpart for (the level's k/v projections and η gate) keep the fresh initialisation of
:class:`~nestlearn.models.CausalLM`, drawn from the global RNG.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch

from nestlearn.errors import ConfigError
from nestlearn.layers.cms import CMSConfig, depth_group_chunk_sizes
from nestlearn.models.hope_attention import HopeAttentionConfig
from nestlearn.models.lm import CausalLM, LMConfig, model_config_to_dict
from nestlearn.models.transformer import TransformerConfig


def from_transformer(model: CausalLM, cms: CMSConfig) -> CausalLM:
    """Stack a Transformer++ into Hope-Attention (spec §6.4, D15, D17).

    Args:
        model: a :class:`CausalLM` of family ``transformer``; it is not modified.
        cms: the levels to stack into: ``chunk_sizes`` (one per depth group, slowest first, at most
            ``n_layers`` of them), ``eta_max``, ``eta_init``, ``signal``. ``level_form``,
            ``hidden`` and ``level_assignment`` are set here from the pre-trained MLPs
            (``"swiglu"``, their width, ``"depth_groups"``); the variant must be ``"sequential"``.

    Returns:
        A ``hope_attention`` :class:`CausalLM` on the source's device and dtype, in the source's
        train/eval mode. Its config records the assignment; ``config.block_cms(i).chunk_sizes``
        is layer i's chunk size.
    """
    src = model.config
    if not isinstance(src, TransformerConfig):
        raise ConfigError("model.family", f"level stacking starts from a 'transformer' model, got {src.family!r}")
    hidden = model.blocks[0].mlp.gate.out_features
    cms = dataclasses.replace(cms, level_form="swiglu", hidden=hidden, level_assignment="depth_groups")
    shared = {f.name: getattr(src, f.name) for f in dataclasses.fields(LMConfig)}
    cfg = HopeAttentionConfig(**shared, n_heads=src.n_heads, rope_base=src.rope_base, cms=cms)
    cfg.validate()
    weight = model.embed.weight
    stacked = CausalLM(cfg).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        stacked.embed.load_state_dict(model.embed.state_dict())
        stacked.norm.load_state_dict(model.norm.state_dict())
        if model.head is not None:
            stacked.head.load_state_dict(model.head.state_dict())
        for old, new in zip(model.blocks, stacked.blocks):
            new.attn_norm.load_state_dict(old.attn_norm.state_dict())
            new.attn.load_state_dict(old.attn.state_dict())
            (level,) = new.cms.levels
            level.norm.weight.copy_(old.mlp_norm.weight)
            level.w_gate.copy_(old.mlp.gate.weight)
            level.w_up.copy_(old.mlp.up.weight)
            level.w_down.copy_(old.mlp.down.weight)
    return stacked.train(model.training)


def stack_checkpoint(path: str | Path, cms: CMSConfig, out: str | Path | None = None,
                     device: str | torch.device = "cpu") -> tuple[CausalLM, Any, dict]:
    """:func:`from_transformer` on a trained checkpoint (file or run folder).

    Returns (model, tokenizer, meta) like :func:`nestlearn.train.loading.load_model`. ``meta`` is
    the source's, with ``config.model`` replaced by the stacked model's and a ``stacking`` record:
    the source path, the assignment rule, which end is slow (D17: provisional) and every layer's
    chunk size. With ``out`` (a folder) the result is also written to ``out/checkpoint.safetensors``,
    which :func:`~nestlearn.train.loading.load_model` and ``nestlearn eval`` read; it holds no
    optimiser state, so a training run cannot resume from it.
    """
    from nestlearn.train.checkpoint import save_checkpoint
    from nestlearn.train.loading import CHECKPOINT, load_model, model_state_tensors

    source, tokenizer, meta = load_model(path, device)
    stacked = from_transformer(source, cms)
    meta = copy.deepcopy(meta)
    meta["config"]["model"] = model_config_to_dict(stacked.config)
    meta["stacking"] = {
        "source": str(path),
        "level_assignment": "depth_groups",
        "slow_layers": "shallow",
        "layer_chunk_sizes": list(depth_group_chunk_sizes(stacked.config.n_layers, stacked.config.cms.chunk_sizes)),
    }
    if out is not None:
        save_checkpoint(Path(out) / CHECKPOINT, model_state_tensors(stacked), meta)
    return stacked, tokenizer, meta
