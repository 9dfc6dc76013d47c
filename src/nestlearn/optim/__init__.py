"""The paper's optimisers as ``torch.optim`` optimisers (NL-L §4, §7.2; spec §2, §3, §7).

- :class:`Muon` (Eq 42), :class:`M3` (Algorithm 1, D19), :class:`DeltaMomentum` (Eq 49, D1, D21),
  :class:`PreconditionedMomentum` (Eq 47), :class:`DMGD` (Eq 50/52, D21), :class:`DGD` (Eq 57, D1);
- :func:`newton_schulz` (D20);
- :func:`route_parameters` and :class:`CombinedOptimizer` (D20);
- :class:`PeriodicOptimizer`: per-level step periods for the CMS ``optimizer`` signal (D13, D16);
- :class:`OptimConfig` and :func:`build_optimizer`, used by the trainer.
"""

from nestlearn.optim.config import OPTIMIZER_NAMES, OptimConfig, build_optimizer
from nestlearn.optim.dgd import DGD
from nestlearn.optim.dmgd import DMGD
from nestlearn.optim.m3 import M3
from nestlearn.optim.momentum import DeltaMomentum, PreconditionedMomentum
from nestlearn.optim.muon import Muon
from nestlearn.optim.newton_schulz import (
    CUBIC_COEFFICIENTS,
    NS_COEFFICIENTS,
    NS_STEPS,
    newton_schulz,
)
from nestlearn.optim.periodic import PeriodicOptimizer
from nestlearn.optim.routing import (
    NO_MUON_ATTR,
    CombinedOptimizer,
    ParamRouting,
    route_parameters,
)

__all__ = [
    "CUBIC_COEFFICIENTS",
    "DGD",
    "DMGD",
    "M3",
    "NO_MUON_ATTR",
    "NS_COEFFICIENTS",
    "NS_STEPS",
    "OPTIMIZER_NAMES",
    "CombinedOptimizer",
    "DeltaMomentum",
    "Muon",
    "OptimConfig",
    "ParamRouting",
    "PeriodicOptimizer",
    "PreconditionedMomentum",
    "build_optimizer",
    "newton_schulz",
    "route_parameters",
]
