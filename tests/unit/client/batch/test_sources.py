"""Inputs streamed in order: globs matched like glob's, listed one directory at a time."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

from mnist_serving.client.batch import sources


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [
        "a/1.png",
        "a/2.jpg",
        "a/b/3.png",
        "a/b/c/4.png",
        "a/.hidden/5.png",
        "a/.6.png",
        "d/7.png",
        "d/notes.txt",
        "8.png",
        "e.png/9.png",  # a directory whose name matches a file pattern
    ]:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    return tmp_path


PATTERNS = ["*.png", "a/*.png", "*/*.png", "a/**/*.png", "**/*.png", "**", "a/**", "a/.*.png", "[ad]/?.png"]


@pytest.mark.parametrize("relative", [True, False])
@pytest.mark.parametrize("pattern", PATTERNS)
def test_globs_find_what_glob_finds_in_sorted_order(tree, pattern, relative):
    pattern = pattern if relative else str(tree / pattern)
    expected = sorted(
        (p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)),
        key=lambda p: Path(p).parts,
    )
    assert [str(p) for p in sources._glob(pattern)] == expected


def test_a_glob_yields_its_first_match_before_listing_the_rest(tree, monkeypatch):
    listed: list[Path] = []
    entries = sources._entries

    def counting(directory: Path):
        listed.append(Path(directory))
        return entries(directory)

    monkeypatch.setattr(sources, "_entries", counting)
    matches = sources._glob(str(tree / "**" / "*.png"))
    assert next(matches) == tree / "8.png"
    assert listed == [tree]  # only the top directory so far; its subdirectories wait
    rest = list(matches)
    assert tree / "d" / "7.png" in rest and len(listed) > 4


@pytest.mark.parametrize("given", [".", "./", "a", "a/", "a//b/..", "ABSOLUTE", "e.png"])
def test_a_walked_directory_names_its_files_as_pathlib_does(tree, given):
    """The walk builds names as strings (a Path a file costs twice the rest of the walk); the output,
    and --resume's comparison with it, still see the names pathlib gives."""
    given = str(tree) if given == "ABSOLUTE" else given
    found = sources.Inputs()
    names = [name for chunk in sources.chunks([given], 3, found) for name, _ in chunk.names()]
    expected = sorted(
        (
            str(Path(root) / name)
            for root, _, files in os.walk(Path(given))
            for name in files
            if Path(name).suffix.lower() in sources.IMAGE_SUFFIXES
        ),
        key=lambda p: Path(p).parts,
    )
    assert names == expected and names
    assert found.skipped == (1 if given.rstrip("/") in (".", str(tree)) else 0)  # d/notes.txt
