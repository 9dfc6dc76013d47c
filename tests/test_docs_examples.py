"""The front page and the usage docs: every Python example runs as written, and the README's results
summary is what ``benchmarks/run_all.py`` generates from docs/results.md.

Every ```python block of README.md and docs/*.md runs; commands and snippets that cannot run here
(a GPU, the network, a shell) belong in ```bash, ```yaml or ```text blocks.
"""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


BLOCKS = [(page, i, code) for page in PAGES
          for i, code in enumerate(python_blocks(page.read_text(encoding="utf-8")))]


@pytest.mark.parametrize("page, index, code", BLOCKS,
                         ids=[f"{p.relative_to(ROOT)}[{i}]" for p, i, _ in BLOCKS])
def test_example_runs(page, index, code, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples may write files
    exec(compile(code, f"{page.relative_to(ROOT)} python block {index}", "exec"), {})


def test_the_usage_pages_have_examples():
    pages = {p.name for p, _, _ in BLOCKS}
    assert {"README.md", "components.md", "stateful.md", "transformers.md", "lm-eval.md"} <= pages
    assert len(BLOCKS) >= 10


def test_a_failing_example_fails():
    with pytest.raises(ZeroDivisionError):
        exec(compile(python_blocks("```python\nx = 1 / 0\n```")[0], "block", "exec"), {})


@pytest.fixture
def run_all(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_results_summary_is_generated_from_results_md(run_all):
    from markers import body

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    results = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    assert body(readme, run_all.SUMMARY) == run_all.readme_summary(results).strip(), (
        "regenerate it: python benchmarks/run_all.py --summary")
    # The summary follows the document: a changed number shows up in it.
    hope = hope_row(run_all, results)
    heading = run_all.SUMMARY_TABLE[1]
    i = run_all.table(results, heading)[0].index("non-emb. params")
    cells = hope.split(" | ")  # "| Hope", then the table's other columns
    changed = results.replace(hope, " | ".join([*cells[:i], "9" + cells[i], *cells[i + 1:]]))
    assert changed != results and f"| Hope | 9{cells[i]} |" in run_all.readme_summary(changed)


def hope_row(run_all, results):
    """The Hope line of the LM section's models table in ``results``."""
    key, heading, _ = run_all.SUMMARY_TABLE
    section = results.split(f"<!-- {key}:begin -->")[1].split(heading)[1]
    return next(line for line in section.splitlines() if line.startswith("| Hope | "))


def test_run_all_rewrites_the_readme_summary(run_all, tmp_path):
    results, readme = tmp_path / "results.md", tmp_path / "README.md"
    results.write_text((ROOT / "docs" / "results.md").read_text(encoding="utf-8"), encoding="utf-8")
    readme.write_text("# x\n\n<!-- results-summary:begin -->\nstale\n<!-- results-summary:end -->\n\nafter\n",
                      encoding="utf-8")
    assert run_all.main(["--summary", "--results", str(results), "--readme", str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert "stale" not in text and "| Titans | " in text and text.endswith("\n\nafter\n")


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
    assert "python -m pytest -q" in lines  # the command .ci/run runs
