"""The switch registry (decision D25): every switch of the paper's ambiguities and ablations, in one place.

A *switch* is a configuration field that selects between readings of the paper (decisions D1–D20 of
``docs/decisions.md``; S1–S6 and S12 are the stability and range switches of ``docs/design.md``) or turns a Table-6 ablation on. Each :class:`Switch` names its
dotted config path, the allowed values, the paper reference and the decision id; its default is
read from the config dataclasses, so the registry cannot drift from the code (a test checks that
every allowed value passes validation and that every field of the self-modifying and CMS configs
is registered).

Every run records the full resolved switch set (:func:`resolved_switches`) in its metadata and
checkpoints; the CLI prints the non-default ones at start-up (:func:`non_default_switches`).
Resuming with a different switch is refused by the trainer's config check, which names the field
and both values; ``--allow-config-change`` overrides it and is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import nestlearn.models  # noqa: F401  (default_switches needs every family registered)
from nestlearn.config import to_dict
from nestlearn.models.lm import model_config_from_dict, model_config_to_dict
from nestlearn.optim.config import OptimConfig


@dataclass(frozen=True)
class Switch:
    """Attributes:
        path: dotted config path, e.g. ``"model.selfmod.inner_rule"``.
        allowed: the allowed values, or a one-line description for numeric switches.
        paper: where the paper states (or leaves open) the choice.
        decision: the decision id in docs/decisions.md (``"project"`` for the project's own switches).
        optimizers: for ``optim.*`` switches, the ``optim.name`` values they apply to.
    """

    path: str
    allowed: tuple[Any, ...] | str
    paper: str
    decision: str
    optimizers: tuple[str, ...] = ()


_SELFMOD = "model.selfmod."
_CMS = "model.cms."

SWITCHES: tuple[Switch, ...] = (
    Switch(_SELFMOD + "write_grad", ("differentiable", "stopgrad"), "spec §5.7 (outer gradients through inner writes)", "D3"),
    Switch(_SELFMOD + "chunk_size_memory", "positive integer", "Eq 90 (chunked boundary state)", "D4"),
    Switch(_SELFMOD + "chunk_size_other", "positive multiple of chunk_size_memory", "Eq 90", "D4"),
    Switch(_SELFMOD + "read", ("intra_chunk", "boundary"), "Eq 94 vs Eq 90", "D5"),
    Switch(_SELFMOD + "objective", ("l2", "dot"), "Eqs 92–93", "D6"),
    Switch(_SELFMOD + "inner_rule", ("dgd", "gd"), "Eq 88; Table 6 'w/o DGD'", "D6"),
    Switch(_SELFMOD + "weight_decay", (True, False), "Eq 88 retention α_t; Table 6 'w/o weight decay'", "D6"),
    Switch(_SELFMOD + "eta_max", "number in (0, 1]", "Eqs 86–87 (scalar heads η, α)", "D8"),
    Switch(_SELFMOD + "momentum", ("data", "scalar", "off"), "Table 6 'w/o momentum'", "D9"),
    Switch(_SELFMOD + "momentum_form", ("ema", "scaled"), "spec §5.7 (momentum's gain on the step)", "S1"),
    Switch(_SELFMOD + "eigen", ("positive", "signed"), "Eq 88 (range of the DGD transition)", "S2"),
    Switch(_SELFMOD + "step_norm", ("none", "implicit", "bounded"), "Eq 57 (η/(1 + η‖k‖²)) extended per weight", "S3"),
    Switch(_SELFMOD + "retain", ("zero", "initial"), "Eq 88 retention α_t (its target)", "S4"),
    Switch(_SELFMOD + "write_bound", "number >= 0 (0: none)", "not in the paper (a safety net)", "S5"),
    Switch(_SELFMOD + "adaptive_q", (False, True), "text under Eq 85; Table 6 'w/o inner-projection q'", "D10"),
    Switch(_SELFMOD + "adaptive_k", (True, False), "Eq 85; Table 6 'w/o inner-projection k'", "D10"),
    Switch(_SELFMOD + "adaptive_v", (True, False), "Eq 85; Table 6 'w/o inner-projection v'", "D10"),
    Switch(_SELFMOD + "conv", ("qkv", "input", "none"), "NL-L §8.3 (local convolutions, window 4)", "D11"),
    Switch(_SELFMOD + "conv_pointwise", (False, True), "Titans §4.4", "D11"),
    Switch(_SELFMOD + "qkv_activation", ("silu", "none"), "Titans §4.4", "D11"),
    Switch(_SELFMOD + "output_gate", ("sigmoid", "none"), "Titans §4.4", "D11"),
    Switch(_SELFMOD + "heads", "divisor of model.d_model", "not stated", "D11"),
    Switch(_SELFMOD + "memory_hidden", "positive integer or null (= d_model)", "Eq 89", "D12"),
    Switch(_SELFMOD + "activation", ("silu", "gelu"), "Eq 89", "D12"),
    Switch(_SELFMOD + "memory_out_init", "number >= 0", "Eq 89 (meta-learned initial state)", "D12"),
    Switch(_SELFMOD + "eta_init", "number in (0, 1)", "Eq 86", "D8"),
    Switch(_SELFMOD + "alpha_init", "number in (0, 1)", "Eq 87", "D8"),
    Switch(_SELFMOD + "beta_init", "number in (0, 1)", "momentum gate (Titans Eq 10)", "D9"),
    Switch(_SELFMOD + "v_norm", ("l2", "none"), "Eq 84 (self-generated values); the literal form overflows within a few hundred tokens", "project"),
    Switch(_CMS + "signal", ("kv", "lss", "optimizer"), "Eq 71 ('the error component of an arbitrary optimizer')", "D13"),
    Switch(_CMS + "order", ("slow_first", "fast_first"), "Eqs 70, 97", "D14"),
    Switch(_CMS + "variant", ("sequential", "nested", "independent"), "Eqs 72–74", "D15"),
    Switch(_CMS + "hidden_mult", "positive integer", "§7.1 (MLP levels)", "D15"),
    Switch(_CMS + "hidden", "positive integer or null (= hidden_mult · d_model)", "§7.3 (stacking keeps the MLP width)", "D15"),
    Switch(_CMS + "activation", ("silu", "gelu"), "§7.1", "D15"),
    Switch(_CMS + "level_form", ("mlp", "swiglu"), "§7.3 (pre-trained MLP form)", "D15"),
    Switch(_CMS + "chunk_sizes", "strictly decreasing positive integers, slowest first", "Eq 71 (C(ℓ)); Fig. 7", "D16"),
    Switch(_CMS + "step_periods", "strictly decreasing positive integers, slowest first", "Eq 71 (optimizer signal)", "D16"),
    Switch(_CMS + "level_assignment", ("every_layer", "depth_groups"), "§7.3 (ad-hoc level stacking)", "D17"),
    Switch(_CMS + "eta_max", "number >= 0 (units of 1/(C·d))", "Eq 71 (level learning rate)", "D13"),
    Switch(_CMS + "eta_init", "number in (0, 1)", "Eq 71", "D13"),
    Switch(_CMS + "step_norm", ("bounded", "none"), "Eq 71 (level learning rate per weight)", "S3"),
    Switch(_CMS + "write_bound", "number >= 0 (0: none)", "not in the paper (a safety net)", "S5"),
    Switch("model.momentum", ("none", "titans", "scaled", "ema"), "Titans Eqs 9–10 (surprise momentum)", "S1"),
    Switch("model.eigen", ("positive", "signed"), "delta rule's transition range (Grazzi et al. 2024)", "S2"),
    Switch("model.step_norm", ("none", "implicit", "bounded"), "Eq 57 (η/(1 + η‖k‖²))", "S3"),
    Switch("model.retain", ("zero", "initial"), "Titans Eq 13 forgetting gate (its target)", "S4"),
    Switch("model.write_bound", "number >= 0 (0: none)", "not in the paper (a safety net)", "S5"),
    Switch("model.gate_form", ("eq92", "yang"), "Eq 92 vs Gated DeltaNet as published (Yang et al. 2024)", "S12"),
    Switch("model.use_cms", (True, False), "Table 6 'w/o CMS'", "project"),
    Switch("state.policy", ("reset", "carry", "separator"), "§8 (pre-training vs streams)", "D18"),
    Switch("optim.dgd_form", ("long", "neurips"), "Eq 57 vs NL-N Eq 29", "D1", ("dgd",)),
    Switch("optim.side", ("right", "left"), "Eq 49 vs NL-N Eq 22", "D1", ("delta",)),
    Switch("optim.variant", ("paper", "ema"), "Algorithm 1 (M3)", "D19", ("m3",)),
    Switch("optim.ns_coefficients", "three numbers (a, b, c)", "Eq 52 (Newton–Schulz)", "D20", ("muon", "m3", "dmgd")),
    Switch("optim.ns_steps", "integer >= 0", "Eq 52", "D20", ("muon", "m3", "dmgd")),
)

BY_PATH: dict[str, Switch] = {s.path: s for s in SWITCHES}

# Pre-training resets the fast state per sequence (D18); the stateful API takes the policy per call.
TRAINING_STATE_POLICY = "reset"


def _lookup(tree: dict[str, Any], path: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _run_tree(model: dict[str, Any], optim: dict[str, Any] | None, policy: str) -> dict[str, Any]:
    return {"model": model, "optim": optim or {}, "state": {"policy": policy}}


def default_switches(family: str, optim_name: str | None = None, policy: str = TRAINING_STATE_POLICY) -> dict[str, Any]:
    """The default value of every switch that applies to ``family`` (and optimiser ``optim_name``)."""
    model = model_config_to_dict(model_config_from_dict({"family": family}))
    optim = to_dict(OptimConfig(name=optim_name)) if optim_name is not None else None
    return _resolve(_run_tree(model, optim, policy))


def _resolve(tree: dict[str, Any]) -> dict[str, Any]:
    out = {}
    optim_name = tree["optim"].get("name")
    for switch in SWITCHES:
        if switch.optimizers and optim_name not in switch.optimizers:
            continue
        found, value = _lookup(tree, switch.path)
        if found:
            out[switch.path] = list(value) if isinstance(value, tuple) else value
    return out


def resolved_switches(run: dict[str, Any], policy: str = TRAINING_STATE_POLICY) -> dict[str, Any]:
    """The full switch set of a run: ``{path: value}`` for every registered switch that applies.

    Args:
        run: a run config as a dict (``RunConfig.to_dict()``) with ``model`` and optionally ``optim``.
        policy: the fast-state policy (D18) the run uses.
    """
    return _resolve(_run_tree(run["model"], run.get("optim"), policy))


def non_default_switches(run: dict[str, Any], policy: str = TRAINING_STATE_POLICY) -> list[tuple[str, Any, Any]]:
    """``(path, value, default)`` for every switch of ``run`` that differs from its family's default."""
    family = run["model"]["family"]
    optim_name = run.get("optim", {}).get("name")
    defaults = default_switches(family, optim_name, policy)
    return [(path, value, defaults.get(path)) for path, value in resolved_switches(run, policy).items()
            if defaults.get(path) != value]


def describe_switches(changed: list[tuple[str, Any, Any]]) -> str:
    """One line per non-default switch, with its decision id, for the CLI's start-up banner."""
    if not changed:
        return "switches: all at their defaults (decisions.md)"
    lines = ["non-default switches:"]
    for path, value, default in changed:
        lines.append(f"  {path} = {value!r} (default {default!r}; {BY_PATH[path].decision})")
    return "\n".join(lines)


def registry_table() -> str:
    """The registry as a Markdown table (docs/switches.md), defaults taken from the ``hope`` family."""
    defaults: dict[str, Any] = {}
    for name in ("m3", "dgd", "delta"):
        defaults.update(default_switches("hope", name))
    rows = ["| switch | default | allowed | paper | decision |", "|---|---|---|---|---|"]
    for s in SWITCHES:
        allowed = ", ".join(repr(v) for v in s.allowed) if isinstance(s.allowed, tuple) else s.allowed
        default = defaults.get(s.path, "—")
        rows.append(f"| `{s.path}` | `{default!r}` | {allowed} | {s.paper} | {s.decision} |")
    return "\n".join(rows)


__all__ = [
    "BY_PATH",
    "SWITCHES",
    "Switch",
    "default_switches",
    "describe_switches",
    "non_default_switches",
    "registry_table",
    "resolved_switches",
]
