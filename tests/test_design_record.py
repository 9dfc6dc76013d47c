"""Every design-record citation in the repository resolves to an entry of a document in docs/.

Citation forms and where they resolve:

- ``D13`` (or ``decisions.md D13``) -> a ``## D13`` heading of docs/decisions.md;
- ``S3`` -> a ``## S3`` heading of docs/design.md;
- ``spec §5.7`` (also ``spec §5.3–5.9``, ``spec §2, §3``) -> a ``§5.7`` heading of docs/spec.md;
- ``tasks.md §2.2`` / ``data.md §1`` -> a ``§n`` heading of docs/tasks.md / docs/data.md;
- ``Eq 88``, ``Eqs 70–74``, ``NL-N Eq 29``, ``[T Eqs 16–18]``, ``Titans Eq 10`` -> a row of the
  matching paper's table in docs/equations.md whose equation range contains every cited number.

No file may point into the sources the record was written from (outside the repository).
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED = ("src", "tests", "benchmarks", "docs", "configs")
SUFFIXES = {".py", ".md", ".yaml", ".toml"}
DASH = "[–-]"

D_CITE = re.compile(r"(?<![\w=/.-])D(\d+)\b(?!\s*=)")
S_CITE = re.compile(r"(?<![\w-])S(\d+)\b(?![-\w])")
SECTION = r"§ ?\d+(?:\.\d+)*(?:[–-]§?\d+(?:\.\d+)*)?"
SECTIONS = rf"{SECTION}(?:(?:, | and ){SECTION})*"
DOC_CITE = re.compile(rf"\b(spec|tasks\.md|data\.md),? ({SECTIONS})")
NUMS = r"\d+(?:[–-]\d+)?"
EQ_CITE = re.compile(rf"(?:(NL-N|NL-L|NL|\[T|T|Titans)(?: §[\d.]+)?,? )?Eqs?\.? ({NUMS}(?:(?:, ?| and |/){NUMS})*)")
OUTSIDE = re.compile(r"shared/(?:paper|benchmarks)|\.\./shared|\.\./paper/|\.\./benchmarks/")
PAPERS = {"NL-N": "NL-N", "[T": "T", "T": "T", "Titans": "T"}


def scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for top in SCANNED:
        files += [p for p in sorted((ROOT / top).rglob("*"))
                  if p.suffix in SUFFIXES and p.is_file() and ".egg-info" not in str(p) and p != Path(__file__)]
    return files


def citations(files: list[Path]) -> list[tuple[str, str, str]]:
    """(where, kind, cited) for every citation in ``files``; kind is a document or ``Eq/<paper>``."""
    found = []
    for path in files:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.name}:{n}"
            found += [(where, "D", m.group(1)) for m in D_CITE.finditer(line)]
            found += [(where, "S", m.group(1)) for m in S_CITE.finditer(line)]
            for m in DOC_CITE.finditer(line):
                doc = "spec.md" if m.group(1) == "spec" else m.group(1)
                for part in re.split(r", | and ", m.group(2)):
                    found += [(where, doc, s) for s in re.split(DASH, re.sub(r"§ ?", "", part))]
            for m in EQ_CITE.finditer(line):
                paper = PAPERS.get(m.group(1) or "", "NL-L")
                for part in re.split(r", ?| and |/", m.group(2)):
                    found += [(where, f"Eq/{paper}", num) for num in re.split(DASH, part)]
    return found


def headings(doc: str, pattern: str) -> set[str]:
    text = (DOCS / doc).read_text(encoding="utf-8")
    return set(re.findall(pattern, text, flags=re.M))


def equation_ranges() -> dict[str, list[tuple[int, int]]]:
    """Paper tag -> (first, last) equation numbers of each row of docs/equations.md."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    paper = None
    for line in (DOCS / "equations.md").read_text(encoding="utf-8").splitlines():
        head = re.match(r"## (NL-L|NL-N|T)\b", line)
        if head:
            paper = head.group(1)
        row = re.match(rf"\| (\d+)(?:{DASH}(\d+))? \|", line)
        if paper and row:
            ranges.setdefault(paper, []).append((int(row.group(1)), int(row.group(2) or row.group(1))))
    return ranges


def unresolved(found: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    entries = {
        "D": headings("decisions.md", r"^## D(\d+)\b"),
        "S": headings("design.md", r"^## S(\d+)\b"),
        "spec.md": headings("spec.md", r"^#+ §([\d.]+)\s"),
        "tasks.md": headings("tasks.md", r"^#+ §([\d.]+)\s"),
        "data.md": headings("data.md", r"^#+ §([\d.]+)\s"),
    }
    ranges = equation_ranges()
    bad = []
    for where, kind, cited in found:
        if kind.startswith("Eq/"):
            ok = any(a <= int(cited) <= b for a, b in ranges.get(kind[3:], []))
        else:
            ok = cited in entries[kind]
        if not ok:
            bad.append((where, kind, cited))
    return bad


def test_every_citation_resolves_to_an_entry():
    found = citations(scanned_files())
    kinds = {kind for _, kind, _ in found}
    assert {"D", "S", "spec.md", "tasks.md", "data.md", "Eq/NL-L", "Eq/NL-N", "Eq/T"} <= kinds
    assert unresolved(found) == []


def test_the_record_has_every_decision():
    assert headings("decisions.md", r"^## D(\d+)\b") == {str(n) for n in range(1, 26)}


@pytest.mark.parametrize("line, kind, cited", [
    ("see D99", "D", "99"),
    ("spec §5.10 says", "spec.md", "5.10"),
    ("(spec §5.3–5.12)", "spec.md", "5.12"),
    ("tasks.md §11", "tasks.md", "11"),
    ("data.md §1, §9", "data.md", "9"),
    ("Eq 122", "Eq/NL-L", "122"),
    ("[T Eqs 16–40]", "Eq/T", "40"),
    ("NL-N Eq 99", "Eq/NL-N", "99"),
    ("stability switch S99", "S", "99"),
])
def test_an_unknown_citation_is_reported(line, kind, cited, tmp_path):
    path = tmp_path / "cites.py"
    path.write_text(f"# {line}\n", encoding="utf-8")
    assert (kind, cited) in {(k, c) for _, k, c in unresolved(citations([path]))}


def test_no_file_points_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}"
            for p in [*scanned_files(), ROOT / "pyproject.toml"]
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if OUTSIDE.search(line)]
    assert hits == []
