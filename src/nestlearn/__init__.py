"""nestlearn: Nested Learning (Behrouz et al., NeurIPS 2025) in PyTorch."""

__version__ = "0.1.0"
