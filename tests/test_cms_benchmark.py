"""Smoke test of benchmarks/cms_layer.py: quick mode runs every layer at every length and writes JSON."""

import importlib
import json
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_cms_layer_quick(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    out = tmp_path / "cms.json"
    importlib.import_module("cms_layer").main(["--quick", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    layers = ("cms kv", "cms lss", "cms optimizer", "swiglu mlp")
    assert {(r["layer"], r["seq_len"]) for r in rows} == {(name, s) for name in layers for s in (16, 32)}
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert all(r["ratio_vs_mlp"] == 1.0 for r in rows if r["layer"] == "swiglu mlp")
