"""Docs are code: run the README quick start and every snippet in docs/*.md."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import msgcluster

ROOT = Path(__file__).resolve().parent.parent
SNIPPET = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)


def snippets(path: Path) -> list[str]:
    return SNIPPET.findall(path.read_text())


def test_readme_quick_start_runs() -> None:
    (code,) = snippets(ROOT / "README.md")
    assert len([line for line in code.splitlines() if line.strip()]) <= 20
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "cat.png PRE FLIGHT" in done.stdout
    assert "complete: True" in done.stdout


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")))
async def test_doc_snippets_run(page: str, mc: msgcluster.Client, queue_url: str) -> None:
    namespace: dict[str, Any] = {"mc": mc, "queue_url": queue_url, "__name__": "docs"}
    for code in snippets(ROOT / "docs" / page):
        compiled = compile(
            code, f"docs/{page}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
        )
        result = eval(compiled, namespace)
        if result is not None:
            await result
