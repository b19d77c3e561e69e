"""The Python examples of README.md and docs/*.md run and their assertions hold.

Each Markdown file's ```python blocks run in order in one namespace (a block may use names an
earlier block of the same file defined). An HTML comment on the line before a block marks it:

``<!-- docs-test: gpu -->``
    runs only where CuPy sees a CUDA device (otherwise the rest of the file still runs);
``<!-- docs-test: skip -->``
    never runs (signatures, fragments).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*docs-test:\s*(\w+)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


def python_blocks(path: Path) -> list[tuple[int, str | None, str]]:
    """``(first line number, marker or None, source)`` of every ```python block."""
    blocks = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i + 1
        j = start
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        if lang == "python":
            prev = next((lines[p] for p in range(i - 1, -1, -1) if lines[p].strip()), "")
            marker = MARKER.search(prev)
            blocks.append((start + 1, marker.group(1) if marker else None,
                           "\n".join(lines[start:j])))
        i = j + 1
    return blocks


def gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver or no device
        return False


def test_docs_exist_and_have_examples():
    names = {p.name for p in DOCS}
    assert {"README.md", "semantics.md", "precision.md", "benchmarks.md", "api.md"} <= names
    assert python_blocks(REPO / "README.md")


def test_markers_are_known():
    for path in DOCS:
        for line in path.read_text(encoding="utf-8").splitlines():
            for marker in MARKER.findall(line):
                assert marker in ("gpu", "skip"), f"{path.name}: unknown marker {marker!r}"


@pytest.mark.parametrize("path", DOCS, ids=[p.name for p in DOCS])
def test_python_blocks_run(path, monkeypatch, tmp_path):
    blocks = python_blocks(path)
    if not blocks:
        pytest.skip(f"{path.name} has no Python examples")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    has_gpu = None
    for line, marker, source in blocks:
        if marker == "skip":
            continue
        if marker == "gpu":
            has_gpu = gpu_available() if has_gpu is None else has_gpu
            if not has_gpu:
                continue
        code = compile(source, f"{path.relative_to(REPO)}:{line}", "exec")
        exec(code, namespace)
