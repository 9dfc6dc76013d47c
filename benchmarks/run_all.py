"""Reproduce the evidence: run every section of the evaluation suite and write docs/results.md.

Sections (``nestlearn.eval.suite.<key>.section(quick, out_dir, seed)``): formal-language
recognition (NL-L Table 5), MQAR, the MAD synthetic tasks (NL-L Table 4), S-NIAH-1/2/3, bAbI-style
qa1–qa5 in haystacks, continual learning
and the language-modelling comparison. A section whose module is not installed (or not written
yet) is skipped with a message. Each section's run artefacts (finished cells, JSON, plots) go to ``--out/<key>``, by default
``results/<key>``, where the finished cells are committed, so that the full tier resumes across
working sessions and fresh clones (a ``--quick`` run defaults to ``runs/results/<UTC time>``);
the plots its Markdown references are copied next to docs/results.md.

docs/results.md is updated in place: a header block (command, date, hardware, torch, commit,
seed) and one block per section between ``<!-- key:begin -->`` and ``<!-- key:end -->``. Only the
blocks of the sections run are replaced; every other block (e.g. ``optimizers``, written by
benchmarks/optimizers.py) and all text outside the blocks is kept verbatim. The README's results
summary (its ``results-summary`` block) is then regenerated from the new docs/results.md.

Usage::

    python benchmarks/run_all.py --jobs 2             # the CPU tier (hours on two cores), resuming from results/
    python benchmarks/run_all.py --quick              # smoke version, about ten minutes
    python benchmarks/run_all.py --only formal,mqar --seed 1
    python benchmarks/run_all.py --only formal --models deltanet,hope_formal   # a subset of rows
    python benchmarks/run_all.py --only formal --out runs/formal   # cells elsewhere than results/
    python benchmarks/run_all.py --summary            # only regenerate the README summary from docs/results.md
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import os
import platform
import re
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from markers import block, body, replace_block, span, write_block

from nestlearn.memory import compile_chunk_step
from nestlearn.provenance import git_commit

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("formal", "mqar", "mad", "niah", "babi", "continual", "lm")
# Document order; blocks written by other scripts come after the suite's.
ORDER = (*SECTIONS, "optimizers")
HEADER = "run_all"
# Where a new block goes: after the header, in document order.
PLACES = (HEADER, *ORDER)
TITLE = "# Results\n\nBenchmark results of nestlearn; each section is written by its benchmark script.\n"
RESULTS = ROOT / "docs" / "results.md"
README = ROOT / "README.md"
SUMMARY = "results-summary"  # the README's generated block
# The README summary: the language-modelling table (these columns), the D13 decision and one plot.
SUMMARY_TABLE = ("lm", "### Models at equal parameters and tokens",
                 ("model", "non-emb. params", "lr", "seeds", "val bpb (reset) mean ± std", "val bpb (carried)", "tok/s"))
SUMMARY_PLOT = "formal"


def update_document(text: str | None, header: str, bodies: dict[str, str]) -> str:
    """docs/results.md with the header block and the blocks of ``bodies`` replaced; the rest verbatim.

    Args:
        text: the current document (None: start from the title).
        header: body of the ``run_all`` header block, placed after the title when new.
        bodies: key -> section body (heading and Markdown).
    """
    text = TITLE if text is None else text
    if span(text, HEADER) is None:
        first = min((s[0] for s in (span(text, k) for k in ORDER) if s is not None), default=None)
        head = block(HEADER, header)
        text = (text.rstrip("\n") + "\n\n" + head + "\n") if first is None else (text[:first] + head + "\n\n" + text[first:])
    else:
        text = replace_block(text, HEADER, header)
    for key in ORDER:
        if key in bodies:
            text = replace_block(text, key, bodies[key], PLACES)
    for key, section in bodies.items():
        if key not in ORDER:
            text = replace_block(text, key, section, PLACES)
    return text


def table(markdown: str, after: str) -> list[list[str]]:
    """The cells of the first Markdown table after the line ``after`` (header row first, rule left out)."""
    lines = markdown[markdown.index(after):].splitlines()[1:]
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return [rows[0], *rows[2:]]


def anchor(title: str) -> str:
    """The GitHub anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def readme_summary(results: str) -> str:
    """The README's results summary, generated from the text of docs/results.md."""
    key, heading, columns = SUMMARY_TABLE
    lm = body(results, key)
    rows = table(lm, heading)
    keep = [rows[0].index(c) for c in columns]
    # A run still going reports what it has: the partial note, and no D13 decision before the signal rows.
    notes = [line for line in lm.splitlines() if line.startswith(("**Partial**", "**D13 decision rule"))]
    plot = body(results, SUMMARY_PLOT)
    image = re.search(r"!\[([^\]]*)\]\(([^)\s]+)\)", plot)
    titles = [re.search(r"^## (.+)$", body(results, k), flags=re.M).group(1)
              for k in re.findall(r"^<!-- ([\w-]+):begin -->$", results, flags=re.M) if k != HEADER]
    return "\n".join([
        "_Generated by `benchmarks/run_all.py` from [docs/results.md](docs/results.md); do not edit by hand._",
        "",
        f"{lm.splitlines()[0][3:]} — {heading[4:].lower()} (validation bits per byte, lower is better):",
        "",
        [line for line in lm.splitlines() if line.startswith("- ")][1],
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(row[i] for i in keep) + " |" for row in rows[1:]),
        "",
        *(line for note in notes for line in (note, "")),
        f"{re.search(r'^## (.+)$', plot, flags=re.M).group(1)}:",
        "",
        f"![{image.group(1)}](docs/{image.group(2)})",
        "",
        "Every section of docs/results.md:",
        "",
        *(f"- [{t}](docs/results.md#{anchor(t)})" for t in titles),
    ])


def image_links(markdown: str) -> list[str]:
    """Relative targets of the Markdown image links in ``markdown``."""
    return [t for t in re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", markdown) if "://" not in t and not t.startswith("/")]


def commit() -> str:
    """Short commit id, with ``+dirty`` when tracked files have changes; "unknown" outside git."""
    return git_commit() or "unknown"


def hardware() -> str:
    return (f"`{platform.platform()}`, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__} with {torch.get_num_threads()} thread(s), Python {platform.python_version()}")


def load_section(key: str) -> Callable | None:
    """The ``section`` function of ``nestlearn.eval.suite.<key>``, or None (with a message) when absent."""
    name = f"nestlearn.eval.suite.{key}"
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if err.name != name:
            raise
        print(f"[run_all] {key}: {name} is not available; skipped", file=sys.stderr)
        return None
    fn = getattr(module, "section", None)
    if fn is None:
        print(f"[run_all] {key}: {name} has no section(); skipped", file=sys.stderr)
    return fn


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke version (about ten minutes on two cores)")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=None,
                        help="run artefacts and finished cells (default results/, the committed cells; with --quick "
                             "runs/results/<UTC time>)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of every section")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (per process)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="processes for the sections that train independent cells in parallel (formal, mqar, mad, lm)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the document to update")
    parser.add_argument("--readme", type=Path, default=None,
                        help="the README whose results summary to regenerate (default: README.md when --results "
                        "is docs/results.md, else none)")
    parser.add_argument("--summary", action="store_true",
                        help="run no section; only regenerate the README summary from --results")
    parser.add_argument("--stored-only", action="store_true",
                        help="train nothing: report the cells stored so far (for the sections that take it: lm, mad)")
    parser.add_argument("--models", default="", help="comma-separated rows, for the sections that take them (formal, mad)")
    parser.add_argument("--compile-chunks", action="store_true",
                        help="train with the memories' chunk steps compiled (nestlearn.memory.compile_chunk_step, "
                             "in this process and every worker; minutes to compile per process, then Hope trains "
                             "about 1.46x faster; results agree with eager training to rounding)")
    parser.add_argument("--tables", default="", help="comma-separated tables, for the sections that take them "
                        "(lm: models, ablations, signals)")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.only.split(",") if k.strip()] or list(SECTIONS)
    unknown = [k for k in keys if k not in SECTIONS]
    if unknown:
        parser.error(f"--only: unknown sections {unknown}; allowed: {', '.join(SECTIONS)}")
    if args.jobs < 1:
        parser.error(f"--jobs: must be a positive integer, got {args.jobs}")
    args.keys = keys
    if args.readme is None and args.results.resolve() == RESULTS:
        args.readme = README
    return args


def main(argv: list[str] | None = None, sections: dict[str, Callable] | None = None) -> int:
    """Run the chosen sections and update the document; returns 1 when a section failed.

    ``sections`` maps keys to section functions instead of importing them (tests).
    """
    args = parse_args(argv)
    if args.summary:
        write_summary(args)
        return 0
    torch.set_num_threads(args.threads)
    if args.compile_chunks:
        compile_chunk_step()
    started = datetime.datetime.now(datetime.timezone.utc)
    out = args.out or (ROOT / "runs" / "results" / started.strftime("%Y%m%d-%H%M%S") if args.quick else ROOT / "results")
    docs = args.results.parent
    docs.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/run_all.py" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    stamp = started.strftime("%Y-%m-%d %H:%M UTC")
    rev = commit()
    bodies: dict[str, str] = {}
    failed: list[str] = []
    for key in args.keys:
        fn = sections[key] if sections is not None else load_section(key)
        if fn is None:
            continue
        t0 = time.perf_counter()
        try:
            params = inspect.signature(fn).parameters
            extra = {"jobs": args.jobs} if "jobs" in params else {}
            if args.stored_only and "stored_only" in params:
                extra["stored_only"] = True
            for name in ("models", "tables"):
                value = getattr(args, name)
                if value and name in params:
                    extra[name] = tuple(m.strip() for m in value.split(",") if m.strip())
            sec = fn(args.quick, out / key, args.seed, **extra)
        except NotImplementedError as err:
            print(f"[run_all] {key}: not implemented yet ({err}); skipped", file=sys.stderr)
            continue
        except Exception:  # noqa: BLE001  (one failing section must not lose the others' results)
            traceback.print_exc()
            failed.append(key)
            continue
        minutes = (time.perf_counter() - t0) / 60
        for name in image_links(sec.markdown):
            if (out / key / name).is_file():
                (docs / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(out / key / name, docs / name)
            elif not (docs / name).is_file():
                print(f"[run_all] {key}: image {name} not found in {out / key} or {docs}", file=sys.stderr)
        run_line = (f"_Run {stamp} by `{cmd}`{' (quick)' if args.quick else ''}, seed {args.seed}, commit "
                    f"{rev}, {minutes:.1f} min in this invocation (stored cells are reused); artefacts in `{os.path.relpath(out / key, ROOT)}`._")
        bodies[key] = f"## {sec.title}\n\n{run_line}\n\n{sec.markdown.strip()}\n"
        print(f"[run_all] {key}: done in {minutes:.1f} min", file=sys.stderr)
    header = "\n".join([
        ("Sections between `<!-- key:begin -->` / `<!-- key:end -->` markers are generated by "
        "`benchmarks/run_all.py` (or, for `optimizers`, by `benchmarks/optimizers.py`); do not edit them by hand. "
        "Each section states the command, seeds and date of its own run. Latest `run_all` invocation:"),
        "",
        f"- Command: `{cmd}`",
        f"- Date: {stamp}",
        f"- Hardware: {hardware()}",
        f"- Commit: {rev}",
        f"- Seed: {args.seed}; sections run: {', '.join(bodies) or 'none'}"
        + (f"; failed: {', '.join(failed)}" if failed else ""),
        f"- Setting: {'quick (smoke run, not evidence)' if args.quick else 'CPU tier (docs/tasks.md)'}",
    ])
    if bodies:
        old = args.results.read_text(encoding="utf-8") if args.results.exists() else None
        args.results.write_text(update_document(old, header, bodies), encoding="utf-8")
        print(f"[run_all] wrote {args.results}", file=sys.stderr)
        write_summary(args)
    return 1 if failed else 0


def write_summary(args: argparse.Namespace) -> None:
    """Regenerate the README's results summary from ``--results`` (when there is a README to update)."""
    if args.readme is not None:
        write_block(args.readme, SUMMARY, readme_summary(args.results.read_text(encoding="utf-8")))
        print(f"[run_all] wrote the results summary of {args.readme}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
