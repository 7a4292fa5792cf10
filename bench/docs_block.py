"""Figures written into docs/benchmarks.md between markers, and into the hand-written analysis
it is rebuilt from (docs/benchmarks-analysis.md), so rebuilding the page keeps them."""

from __future__ import annotations

from pathlib import Path


def write_block(docs: Path, name: str, heading: str, body: str) -> None:
    """Replace the ``name`` block (``<!-- name:begin -->`` … ``<!-- name:end -->``) with ``body``;
    a page without it gets it at the end, under ``heading``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    pages = [docs]
    if docs.name == "benchmarks.md":  # rebuilt by bench/run.py from the analysis beside it
        pages.append(docs.parent / "benchmarks-analysis.md")
    for page in pages:
        if not page.exists():
            continue
        text = page.read_text()
        if begin not in text:
            text = text.rstrip() + f"\n\n{heading}\n\n{begin}\n{end}\n"
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        page.write_text(f"{head}{begin}\n{body}\n{end}{tail}")
