"""benchmarks/run_all.py: the document keeps every block it does not rewrite; --only rewrites only its sections."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from nestlearn.eval.suite import Section

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_all():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # as when run as a script: its sibling modules import
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(ROOT / "benchmarks"))


OPTIMIZERS = "<!-- optimizers:begin -->\n## Optimisers\n\n| a | b |\n|---|---|\n| 1 | 2 |\n<!-- optimizers:end -->"
DOC = f"# Results\n\nIntro text kept as is.\n\n{OPTIMIZERS}\n\nA footnote outside any block.\n"


def fake(key, value, calls):
    def section(quick, out_dir, seed=0):
        calls.append((key, quick, seed))
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"results_{key}.png").write_bytes(b"png")
        return Section(key, f"Title {key}", f"value {value}\n\n![plot](results_{key}.png)", {"value": value})
    return section


def test_replace_block_in_place_and_in_order(run_all):
    text = run_all.update_document(DOC, "header", {"mqar": "M1", "formal": "F1"})
    assert OPTIMIZERS in text and "Intro text kept as is." in text and "A footnote outside any block." in text
    assert text.index("<!-- run_all:begin -->") < text.index("<!-- formal:begin -->") < text.index(
        "<!-- mqar:begin -->") < text.index("<!-- optimizers:begin -->")
    again = run_all.update_document(text, "header 2", {"mqar": "M2"})
    assert "F1" in again and "M2" in again and "M1" not in again and "header 2" in again
    assert again.replace("M2", "M1").replace("header 2", "header") == text
    assert run_all.update_document(None, "h", {"niah": "N"}).startswith("# Results")


def test_main_with_fake_sections_writes_document_plots_and_keeps_optimizers(run_all, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    results = docs / "results.md"
    results.write_text(DOC)
    calls = []
    sections = {k: fake(k, i, calls) for i, k in enumerate(("formal", "mqar", "niah", "babi"))}
    argv = ["--quick", "--only", "formal,mqar", "--out", str(tmp_path / "runs"), "--results", str(results), "--seed", "3"]
    assert run_all.main(argv, sections=sections) == 0
    assert calls == [("formal", True, 3), ("mqar", True, 3)]
    text = results.read_text()
    assert OPTIMIZERS in text and "## Title formal" in text and "value 1" in text and "niah" not in text
    assert "--only formal,mqar" in text and "Seed: 3" in text
    assert (docs / "results_formal.png").read_bytes() == b"png"
    # Rerunning one section replaces only its block.
    sections["formal"] = fake("formal", 42, calls)
    assert run_all.main(["--only", "formal", "--out", str(tmp_path / "runs2"), "--results", str(results)],
                        sections=sections) == 0
    new = results.read_text()
    assert "value 42" in new and "value 1" in new and OPTIMIZERS in new and "value 0" not in new
    mqar_block = text[text.index("<!-- mqar:begin -->"):text.index("<!-- mqar:end -->")]
    assert mqar_block in new


def test_a_failing_section_keeps_its_old_block_and_fails_the_run(run_all, tmp_path):
    results = tmp_path / "results.md"
    results.write_text(DOC)
    calls = []

    def broken(quick, out_dir, seed=0):
        raise RuntimeError("boom")

    code = run_all.main(["--only", "formal,mqar", "--out", str(tmp_path / "r"), "--results", str(results)],
                        sections={"formal": broken, "mqar": fake("mqar", 5, calls)})
    assert code == 1 and "value 5" in results.read_text() and "failed: formal" in results.read_text()


def test_the_full_tier_resumes_from_the_committed_cells_by_default(run_all, tmp_path):
    """Without --out the full tier keeps its cells in results/ (committed, so a fresh clone resumes);
    a --quick run goes to a fresh folder under runs/, never over the committed cells."""
    outs = []

    def record(quick, out_dir, seed=0):
        outs.append(out_dir)
        raise RuntimeError("recorded")  # nothing is written

    results = tmp_path / "results.md"
    results.write_text(DOC)
    for quick in ([], ["--quick"]):
        assert run_all.main(["--only", "formal", "--results", str(results), *quick], sections={"formal": record}) == 1
    assert outs[0] == run_all.ROOT / "results" / "formal"
    assert outs[1].parent.parent == run_all.ROOT / "runs" / "results"


def test_unknown_section_is_refused(run_all):
    with pytest.raises(SystemExit):
        run_all.parse_args(["--only", "formal,nope"])


def test_formal_section_in_the_test_setting(tmp_path):
    from nestlearn.eval.suite import formal

    sec = formal.section(False, tmp_path, 0, settings=formal.SETTINGS["test"])
    assert sec.key == "formal" and (tmp_path / "results_formal.png").is_file()
    data = json.loads((tmp_path / "formal.json").read_text())
    cells = data["runs"]["0"]["parity"]
    assert set(cells) >= {"lstm", "transformer"} and all(0 <= cells[m][b] <= 1 for m in ("lstm", "transformer")
                                                         for b in ("bin0", "bin1"))
    assert "| LSTM |" in sec.markdown and "Parity Bin1" in sec.markdown and "--only formal --seed 0" in sec.markdown


def test_formal_cells_no_baseline_learns_are_called_uninformative():
    from nestlearn.eval.suite import formal

    def runs(lstm, hope):
        return {"lstm": {"bin0": lstm[0], "bin1": lstm[1]}, "hope_formal": {"bin0": hope[0], "bin1": hope[1]}}

    result = {"settings": {"languages": ["parity", "anbn"], "models": ["lstm", "hope_formal"]},
              "runs": {"0": {"parity": runs((1.0, 0.95), (0.5, 0.1)), "anbn": runs((1.0, 0.2), (1.0, 0.0))}}}
    assert formal.uninformative(result) == ["aⁿbⁿ Bin1 (best baseline LSTM 20.0 %)"]
    assert "uninformative at this budget" in formal.claims(result)[0]


def test_text_probe_section_in_the_test_setting(tmp_path):
    from nestlearn.eval.suite import babi

    sec = babi.section(False, tmp_path, 0, settings=babi.SETTINGS["test"])
    grid = sec.data["runs"]["0"]["lstm"]["grid"]["babi_qa1"]
    assert set(grid) == {"0", "256"} and all(0 <= grid[n][m] <= 1 for n in grid for m in ("decoding", "ranking"))
    assert (tmp_path / "results_babi.png").is_file() and "| LSTM | qa1 |" in sec.markdown
    cells = [json.loads(p.read_text()) for p in (tmp_path / "cells").glob("*.json")]
    assert cells and all(len(c["digest"]) == 16 for c in cells)  # keyed by behaviour, as formal's are


def test_formal_cells_do_not_depend_on_jobs_and_resume(tmp_path, monkeypatch):
    """Two processes give the cells of one; a second run reuses the stored cells instead of training."""
    from nestlearn.eval.suite import common, formal

    s = formal.SETTINGS["test"]
    serial = formal.run(s, tmp_path / "serial", 0, jobs=1)
    parallel = formal.run(s, tmp_path / "parallel", 0, jobs=2)
    for lang in s.languages:
        for fam in s.models:
            a, b = serial["runs"]["0"][lang][fam], parallel["runs"]["0"][lang][fam]
            assert (a["bin0"], a["bin1"], a["final_loss"], a["steps"]) == (b["bin0"], b["bin1"], b["final_loss"], b["steps"])

    def refuse(*args):
        raise AssertionError("a stored cell was trained again")

    monkeypatch.setattr(formal, "run_cell", refuse)
    again = formal.run(s, tmp_path / "serial", 0, jobs=1)
    assert again["runs"] == serial["runs"]
    # A subset of the models (or languages, or seeds) reuses the cells it shares.
    subset = formal.run(formal.replace(s, models=s.models[1:]), tmp_path / "serial", 0, jobs=1)
    assert subset["runs"]["0"][s.languages[0]][s.models[1]] == serial["runs"]["0"][s.languages[0]][s.models[1]]
    # Changed settings invalidate the stored cells.
    with pytest.raises(AssertionError, match="trained again"):
        formal.run(formal.replace(s, steps=s.steps + 1), tmp_path / "serial", 0, jobs=1)
    # A code change that alters what a cell computes (here: the models' initialisation) reruns it.
    init = formal.suite_model

    def rescaled(*args, **kwargs):
        model = init(*args, **kwargs)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.5)
        return model

    monkeypatch.setattr(formal, "suite_model", rescaled)
    with pytest.raises(AssertionError, match="trained again"):
        formal.run(s, tmp_path / "serial", 0, jobs=1)
    # So does a config switch that leaves the losses unchanged (a context bound the LSTM never reaches).
    monkeypatch.setattr(formal, "suite_model", init)
    switched = dict(common.VARIANTS, lstm=("lstm", {"max_seq_len": 4096}))
    monkeypatch.setattr(common, "VARIANTS", switched)
    with pytest.raises(AssertionError, match="trained again"):
        formal.run(s, tmp_path / "serial", 0, jobs=1)
    with pytest.raises(ValueError, match="jobs"):
        common.run_cells(refuse, {}, {}, tmp_path, jobs=0)


def test_probe_status_lines_name_diverged_models_and_models_at_chance():
    from nestlearn.eval.suite.probes import status_lines

    def model(score, loss):
        grid = {"t": {str(n): {"ranking": score, "decoding": 0.0} for n in (512, 1024)}}
        return {"grid": grid, "final_loss": loss, "nonfinite_steps": 0 if loss == loss else 7}

    settings = {"models": ["transformer", "titans", "hope"], "tasks": ["t"], "eval_lens": [512, 1024],
                "samples": 100, "steps": 50}
    result = {"settings": settings, "runs": {"0": {"transformer": model(0.12, 2.0), "titans": model(0.9, 1.0),
                                                   "hope": model(0.0, float("nan"))}}}
    lines = status_lines(result, chance=0.1)
    assert lines[0].startswith("- Diverged") and "Hope (7 of 50 steps skipped)" in lines[0]
    # Two standard errors above 10 % at n = 100 is 16 %: 12 % is chance, 90 % is not.
    assert "16.0 %" in lines[1] and "Transformer++" in lines[1] and "Titans" not in lines[1]
    assert status_lines(result) == lines[:1]
    # Per-task levels: 12 % is within two standard errors of 1/6 (≤ 24.1 % at n = 100).
    per_task = status_lines(result, chance={"t": 1 / 6})
    assert "≤ 24.1 % for t" in per_task[1] and "Transformer++" in per_task[1] and "Titans" not in per_task[1]


def test_negative_eigenvalues_let_deltanet_learn_parity():
    """design.md S2: with steps in (0, 2] DeltaNet solves Parity (lengths 1–16) in at most 300 steps and
    generalises to longer strings; with steps in (0, 1] it does not."""
    from dataclasses import replace

    from nestlearn.eval.suite import formal

    s = replace(formal.SETTINGS["full"], languages=("parity",), train_lengths=(1, 16), train_count=1000,
                bin_count=100, steps=300, check_every=50, check_size=128, seeds=1)
    positive = formal.run_cell("parity", s, 0, "deltanet")
    signed = formal.run_cell("parity", s, 0, "deltanet_signed")
    assert signed["bin0"] == 1.0 and signed["bin1"] >= 0.5, signed
    assert positive["bin0"] < 0.9 and positive["bin1"] < 0.1, positive


def test_workers_inherit_the_chunk_compilation(tmp_path):
    """``--compile-chunks`` sets the compiled chunk steps in run_all's process; every spawned cell
    worker (formal, mqar, mad, and the lm rows) takes the setting over with the thread count."""
    from nestlearn.eval.suite.common import run_cells
    from nestlearn.memory import chunk_compile_backend, compile_chunk_step

    try:
        compile_chunk_step("aot_eager")
        done = run_cells(chunk_compile_backend, {"a": (), "b": ()}, {}, tmp_path, jobs=2)
    finally:
        compile_chunk_step(None)
    assert done == {"a": "aot_eager", "b": "aot_eager"}
