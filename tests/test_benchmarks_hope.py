"""Smoke tests of issue 4's benchmark scripts: quick mode on tiny models writes the expected JSON rows."""

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch):
    """Import a script from benchmarks/ the way it runs (its folder on sys.path)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return lambda name: importlib.import_module(name)


def test_hope_throughput_quick(bench, tmp_path):
    out = tmp_path / "throughput.json"
    bench("hope_throughput").main(["--quick", "--out", str(out)])
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert {(r["model"], r["seq_len"]) for r in rows} == {(m, s) for m in ("hope", "titans", "transformer") for s in (16, 32)}
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert all(r["ratio_vs_transformer"] == 1.0 for r in rows if r["model"] == "transformer")
    assert all(r["flops_per_token"] > 0 and r["gflops_per_s"] > 0 for r in rows)
    assert all(r["flop_bound_vs_transformer"] == 1.0 for r in rows if r["model"] == "transformer")
    assert set(result["non_embedding_params"]) == {"hope", "titans", "transformer"}
    assert result["max_param_deviation"] < 0.25  # tiny widths step coarsely; hope-small's match is tighter


def test_hope_throughput_overrides_rematch_the_baselines(bench, tmp_path):
    module = bench("hope_throughput")
    base = module.equal_param_configs(True, 32)
    changed = module.equal_param_configs(True, 32, ["cms.signal=optimizer", "cms.hidden_mult=1"])
    assert changed["hope"]["cms"]["signal"] == "optimizer" and "signal" not in module.HOPE_QUICK["cms"]
    fewer = module.non_embedding_params(changed["hope"]) < module.non_embedding_params(base["hope"])
    assert fewer and changed["transformer"]["d_model"] < base["transformer"]["d_model"]
    from nestlearn.errors import ConfigError
    with pytest.raises(ConfigError, match="--write-docs"):
        module.main(["--quick", "--set", "cms.signal=optimizer", "--write-docs"])


def test_keep_state_quick(bench, tmp_path):
    out = tmp_path / "keep_state.json"
    bench("keep_state").main(["--quick", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {(r["model"], r["seq_len"]) for r in rows} == {(m, s) for m in ("hope", "titans") for s in (16, 32)}
    assert all(r["step_s_kept"] > 0 and r["step_s_dropped"] > 0 for r in rows)
    # The quick configs' memories write after their last chunk, which a dropped state skips.
    assert all(r["flops_per_token_dropped"] < r["flops_per_token_kept"] for r in rows)


def test_decode_quick(bench, tmp_path):
    out = tmp_path / "decode.json"
    bench("decode").main(["--quick", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["length"]) for r in rows] == [(m, n) for n in (16, 32, 64) for m in ("hope", "transformer")]
    hope = [r["state_bytes"] for r in rows if r["model"] == "hope"]
    cache = [r["state_bytes"] for r in rows if r["model"] == "transformer"]
    # The recurrent state has a fixed size; the KV cache grows with the context.
    assert len(set(hope)) == 1 and cache == sorted(cache) and cache[-1] > cache[0]
    assert all(r["context"] >= r["length"] and r["ms_per_token"] > 0 for r in rows)


def test_write_block_between_markers(bench, tmp_path):
    write_block = bench("markers").write_block
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nintro\n")
    write_block(doc, "x", "table one", heading="Heading")
    write_block(doc, "x", "table two", heading="Heading")
    text = doc.read_text()
    assert text.count("## Heading") == 1 and text.count("<!-- x:begin -->") == 1
    assert "table two" in text and "table one" not in text and text.startswith("# Performance\n\nintro\n")
    write_block(tmp_path / "new.md", "y", "body", title="# Title\n")
    assert (tmp_path / "new.md").read_text() == "# Title\n\n<!-- y:begin -->\nbody\n<!-- y:end -->\n"


def test_count_flops_matmul_and_cpu_attention(bench):
    count_flops = bench("timing").count_flops
    a, b = torch.randn(3, 5), torch.randn(5, 7)
    assert count_flops(lambda: a @ b) == 2 * 3 * 5 * 7
    batch, heads, n, dh = 1, 2, 8, 4
    q = torch.randn(batch, heads, n, dh, requires_grad=True)
    # The CPU kernel is counted like the CUDA ones: two (n x n) products forward, five backward.
    forward = count_flops(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True))
    assert forward == 2 * (2 * batch * heads * n * n * dh)
    total = count_flops(lambda: F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward())
    assert total == forward * 7 // 2


def test_timing_refuses_to_time_a_step_with_non_finite_numbers(bench):
    """A benchmark never reports the time of NaN arithmetic: a non-finite output, loss or gradient
    of any timed call stops it, naming the step."""
    timing = bench("timing")
    layer = torch.nn.Linear(3, 3)

    def step(scale):
        def run():
            layer.zero_grad(set_to_none=True)
            loss = (layer(torch.ones(2, 3)) * scale).sum()
            loss.backward()
            return timing.training_outputs(loss, layer)
        return run

    assert timing.interleaved_medians({"finite": step(1.0)}, repeats=2)["finite"] > 0
    with pytest.raises(timing.NonFinite, match="overflowing step"):
        timing.interleaved_medians({"finite": step(1.0), "overflowing step": step(float("inf"))}, repeats=2)
    with pytest.raises(timing.NonFinite, match="nan"):
        timing.median_time(lambda: {"out": torch.tensor([0.0, float("nan")])}, repeats=1, name="nan")


def test_memory_layer_peer_is_an_optional_extra(bench, monkeypatch):
    """Without titans-pytorch, --peer stops with a one-line hint at the bench extra; the docs block
    holds every ratio and every difference that could not be removed."""
    monkeypatch.setitem(sys.modules, "titans_pytorch", None)  # makes the import fail even where installed
    peer, layer = bench("peer_titans"), bench("memory_layer")
    with pytest.raises(peer.PeerUnavailable, match=r"\[bench\]"):
        peer.peer_layer(16, 2, 4)
    row = {"batch": 4, "seq": 1024, "nestlearn": 900.0, "boundary": 1200.0, "peer": 1000.0, "ratio": 0.9,
           "ratio_boundary": 1.2}
    text = layer.peer_markdown([row], repeats=5, peer_version="0.5.5")
    assert "| 4 × 1024 | 1,000 | 900 | 0.90× | 1,200 | 1.20× |" in text and "titans-pytorch 0.5.5" in text
    assert all(d in text for d in peer.DIFFERENCES)


def test_lm_allocation_report_reads_the_cells(bench, tmp_path, monkeypatch):
    """The allocation table (docs/design.md S11) is the mean ± seed std of the committed cells per row and budget."""
    la = bench("lm_allocation")
    monkeypatch.setattr(la, "CELLS", tmp_path)
    for seed, bpb in enumerate((2.0, 2.2)):
        (tmp_path / f"titans-600-seed{seed}.json").write_text(json.dumps(
            {"name": "titans", "steps": 600, "seed": seed, "bpb": bpb, "parameters": 320730}))
    (tmp_path / "hope-150-seed0.json").write_text(json.dumps(
        {"name": "hope", "steps": 150, "seed": 0, "bpb": 2.75, "parameters": 338892}))
    table = la.report()
    assert "| Titans (the LM section's row) | 108 | 320,730 | — | 2.100 ± 0.141 (2 seeds) |" in table
    assert "2.750 (1 seed) | — |" in table
    assert "without CMS" not in table  # rows without cells are left out


def test_hope_ops_counts_every_part_and_each_memory_chunk(bench):
    counts = bench("hope_ops").main(["--model", "quick", "--batch", "2", "--seq", "32"])
    parts = ("the rest of the block", "generating memories", "output memory", "CMS", "backward")
    assert all(counts[p] > 0 for p in parts)
    # HOPE_QUICK: output memory chunks of 4 tokens, generating memories of 8 in two groups, whose last
    # chunk a training call (keep_state=False) skips, and CMS levels of 16 and 8 (read in every chunk).
    assert counts["memory chunk calls (C = 4)"] == 8 and counts["memory chunk calls (C = 8)"] == 2 * 3 + 4
    assert counts["memory chunk calls (C = 16)"] == 2
    assert bench("hope_ops").main(["--model", "quick", "--batch", "2", "--seq", "32"]) == counts  # deterministic


def test_cms_in_context_measures_each_writing_level(bench):
    """benchmarks/cms_in_context.py (design.md S7) reads the levels' weights from the memory state."""
    from nestlearn.models.lm import CausalLM, model_config_from_dict

    hope_quick = bench("hope_throughput").HOPE_QUICK
    torch.manual_seed(0)
    model = CausalLM(model_config_from_dict({"family": "hope", **hope_quick, "vocab_size": 256, "max_seq_len": 64}))
    rows = bench("cms_in_context").level_motion(model, torch.randint(0, 256, (2, 48)))
    assert [r["chunk_size"] for r in rows] == list(hope_quick["cms"]["chunk_sizes"])
    assert all(r["eta"] > 0 and r["output_change"] > 0 for r in rows)
