"""The CMS configuration: levels, update signal, variant, level form and step (D13–D17)."""

from __future__ import annotations

from dataclasses import dataclass

from nestlearn.errors import ConfigError, check_choice, check_positive

VARIANTS = ("sequential", "nested", "independent")
ORDERS = ("slow_first", "fast_first")
SIGNALS = ("kv", "lss", "optimizer")
ACTIVATIONS = ("silu", "gelu")
LEVEL_FORMS = ("mlp", "swiglu")
LEVEL_ASSIGNMENTS = ("every_layer", "depth_groups")
CMS_STEP_NORMS = ("bounded", "none")


@dataclass
class CMSConfig:
    """Attributes (D13–D16):
        chunk_sizes: C(ℓ) per level in tokens, slowest first, strictly decreasing; the levels of the
            ``kv`` and ``lss`` signals (``lss`` also needs each size to divide the slower one).
        step_periods: per level, in optimiser steps, slowest first, strictly decreasing; the levels
            of the ``optimizer`` signal (D16).
        variant: ``"sequential"``, ``"nested"`` or ``"independent"`` (``optimizer``: not nested).
        order: ``"slow_first"`` or ``"fast_first"`` application order of the chain.
        signal: update signal (D13): ``"kv"`` (local key-value regression), ``"lss"`` (local
            surprise signal: the gradient of the model's next-token loss) or ``"optimizer"`` (the
            outer optimiser steps level ℓ every ``step_periods[ℓ]`` steps).
        hidden_mult: hidden width of each level as a multiple of d.
        hidden: hidden width of each level; None means ``hidden_mult``·d (stacking sets the
            pre-trained MLP's width).
        activation: σ, ``"silu"`` or ``"gelu"``; the SwiGLU form needs ``"silu"``.
        level_form: ``"swiglu"`` (x + W_down(SiLU(W_gate n(x)) ⊙ W_up n(x)), the default since 2026-12-07,
            design.md S11) or ``"mlp"`` (x + W_out σ(W_in n(x))), D15.
        level_assignment: how a model spreads the levels over its layers (D17): ``"every_layer"``
            (every block holds the whole chain) or ``"depth_groups"`` (block i holds one level, the
            one of its contiguous depth group, shallow layers slowest; see :func:`depth_group_chunk_sizes`).
            A model-level layout, read by the family (``hope_attention``), not by :class:`CMS`.
        eta_max: bound of the level learning rate in units of 1/(C·d) (see the module docstring); 0 freezes
            every level. Not used by the ``optimizer`` signal.
        eta_init: initial η_t as a fraction of ``eta_max`` (sets b_η).
        step_norm: ``"bounded"``: each weight's step is η_t/(C·max(1, c_t)) with c_t its curvature: for
            W_out ‖a_t‖² (its input, the hidden activations), for W_in ‖n(k_t)‖²·‖∂F/∂p‖² (its input,
            ‖n(k)‖² ≈ d as in D13's 1/(C·d), times the squared gain of the W_out behind it);
            ``"none"``: η_t/(C·d) for every weight, D13's scale (design.md S3). (The memories' third form,
            ``"implicit"``, equals η_t for small η_t‖p_t‖², d times D13's scale, and is not offered.)
        write_bound: bound τ on each token's gradient norm per weight, 0 for none (design.md S5).
    """

    chunk_sizes: tuple[int, ...] = (512, 128, 32)
    step_periods: tuple[int, ...] = (16, 4, 1)
    variant: str = "sequential"
    order: str = "slow_first"
    signal: str = "kv"
    hidden_mult: int = 4
    hidden: int | None = None
    activation: str = "silu"
    level_form: str = "swiglu"
    level_assignment: str = "every_layer"
    eta_max: float = 1.0
    eta_init: float = 0.1
    step_norm: str = "bounded"
    write_bound: float = 0.0

    def validate(self, prefix: str = "cms") -> None:
        if not self.chunk_sizes:
            raise ConfigError(f"{prefix}.chunk_sizes", "needs at least one level")
        for c in self.chunk_sizes:
            check_positive(f"{prefix}.chunk_sizes", c)
        if any(a <= b for a, b in zip(self.chunk_sizes, self.chunk_sizes[1:])):
            raise ConfigError(f"{prefix}.chunk_sizes", f"must be strictly decreasing (slowest first), got {self.chunk_sizes}")
        if not self.step_periods:
            raise ConfigError(f"{prefix}.step_periods", "needs at least one level")
        for p in self.step_periods:
            check_positive(f"{prefix}.step_periods", p)
        if any(a <= b for a, b in zip(self.step_periods, self.step_periods[1:])):
            raise ConfigError(f"{prefix}.step_periods", f"must be strictly decreasing (slowest first), got {self.step_periods}")
        check_choice(f"{prefix}.variant", self.variant, VARIANTS)
        check_choice(f"{prefix}.order", self.order, ORDERS)
        check_choice(f"{prefix}.signal", self.signal, SIGNALS)
        check_positive(f"{prefix}.hidden_mult", self.hidden_mult)
        if self.hidden is not None:
            check_positive(f"{prefix}.hidden", self.hidden)
        check_choice(f"{prefix}.activation", self.activation, ACTIVATIONS)
        check_choice(f"{prefix}.level_form", self.level_form, LEVEL_FORMS)
        if self.level_form == "swiglu" and self.activation != "silu":
            raise ConfigError(f"{prefix}.activation", f"the swiglu level form gates with SiLU, got {self.activation!r}")
        check_choice(f"{prefix}.level_assignment", self.level_assignment, LEVEL_ASSIGNMENTS)
        if self.level_assignment == "depth_groups" and self.variant != "sequential":
            raise ConfigError(f"{prefix}.variant", f"depth_groups puts one level in each block, so only the "
                              f"sequential variant applies, got {self.variant!r}")
        check_positive(f"{prefix}.eta_max", self.eta_max, allow_zero=True)
        check_choice(f"{prefix}.step_norm", self.step_norm, CMS_STEP_NORMS)
        check_positive(f"{prefix}.write_bound", self.write_bound, allow_zero=True)
        if not 0 < self.eta_init < 1:
            raise ConfigError(f"{prefix}.eta_init", f"must lie in (0, 1), got {self.eta_init}")
        if self.signal == "optimizer" and self.variant == "nested":
            raise ConfigError(f"{prefix}.variant", "the optimizer signal has no fast state, so a level has no "
                              "initial state for the slower level to re-initialise it from; use 'sequential' "
                              "or 'independent'")
        if self.variant == "nested" or self.signal == "lss":
            reason = "the nested variant" if self.variant == "nested" else (
                "the lss signal (a carried stream resumes at the start of the slowest open chunk)")
            for slow, fast in zip(self.chunk_sizes, self.chunk_sizes[1:]):
                if slow % fast:
                    raise ConfigError(f"{prefix}.chunk_sizes", f"{reason} needs each chunk size to divide "
                                      f"the slower one, got {fast} and {slow}")

    @property
    def schedule(self) -> tuple[int, ...]:
        """One entry per level: ``step_periods`` for the ``optimizer`` signal, ``chunk_sizes`` otherwise."""
        return self.step_periods if self.signal == "optimizer" else self.chunk_sizes


def depth_group_chunk_sizes(n_layers: int, chunk_sizes: tuple[int, ...],
                            field: str = "model.cms.chunk_sizes") -> tuple[int, ...]:
    """The chunk size of each layer under ``level_assignment="depth_groups"`` (D17, spec §6.4).

    Layer i of L belongs to group ⌊i·k/L⌋ of k = ``len(chunk_sizes)``: contiguous groups by depth
    whose sizes differ by at most one. Group g gets level g's chunk size; levels are listed slowest
    first (D14), so the shallow layers are the slow ones [Interp, D17: provisional]. The same layout
    spreads ``step_periods`` under the ``optimizer`` signal (``field`` names the list in errors).
    """
    levels = len(chunk_sizes)
    if levels > n_layers:
        raise ConfigError(field, f"depth_groups needs at most one level per layer, got "
                          f"{levels} levels for model.n_layers={n_layers}")
    return tuple(chunk_sizes[i * levels // n_layers] for i in range(n_layers))
