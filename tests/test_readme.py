"""Every ```python block of the README and of the documentation (docs/**/*.md) is complete as pasted:
it compiles, names nothing undefined (pyflakes), and, unless an HTML comment right above it says
``not run``, runs in a fresh interpreter against a local receiver (the environment points the library
at it)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
from pyflakes import checker
from pyflakes import messages as flakes

from analytics_vitally.testing import Receiver, Reply, Request

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("**/*.md"))
BLOCK = re.compile(r"(?:^(<!--[^\n]*-->)\n)?^```python\n(.*?)^```", re.S | re.M)


def blocks(page: Path) -> List[Tuple[str, str, bool]]:
    """``(where, code, run)`` for each python block of ``page``, ``where`` being ``path:line``."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start(2)) + 1
        where = f"{page.relative_to(ROOT).as_posix()}:{line}"
        found.append((where, match.group(2), not (match.group(1) or "").startswith("<!-- not run")))
    return found


README_BLOCKS = blocks(README)
DOCS_BLOCKS = [block for page in DOCS for block in blocks(page)]
BLOCKS = README_BLOCKS + DOCS_BLOCKS

DELIVERS: Dict[str, int] = {
    'analytics.organization("org-1"': 6,  # the quickstart: one message of each type
    'Client("my-token", subdomain="acme", upload_interval=1.0)': 1,
    'analytics.enqueue({"type": "track"': 1,
    'AsyncClient("my-token", subdomain="acme")': 1,
    "import analytics_vitally.segment as analytics   # was": 3,  # held identify, then group: account + user, track
}
"""Blocks that send, by a line they hold: how many messages reach the receiver (the others send none)."""


class AnyKey(Receiver):
    """The local receiver, taking whatever write key an example uses ("...", "my-token")."""

    def answer(self, request: Request) -> Reply:
        self.token = request.headers.get("authorization", "")[len("Basic ") :]
        return super().answer(request)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with AnyKey() as running:
        yield running


def test_the_readme_and_the_docs_have_python_blocks_and_each_sending_one_is_known() -> None:
    assert len(README_BLOCKS) >= 2  # the quickstart, Segment's
    assert len(DOCS) >= 20 and len(DOCS_BLOCKS) >= 20
    for line in DELIVERS:
        assert any(line in code for _, code, run in DOCS_BLOCKS if run), line  # each is run somewhere


@pytest.mark.parametrize("where,code,run", BLOCKS, ids=[where for where, _, _ in BLOCKS])
def test_a_block_is_complete_as_pasted(where: str, code: str, run: bool, receiver: Receiver, tmp_path: Path) -> None:
    tree = ast.parse(code, where)  # a SyntaxError fails here
    undefined = [
        str(message)
        for message in checker.Checker(tree, filename=where).messages
        if isinstance(message, (flakes.UndefinedName, flakes.UndefinedLocal, flakes.UndefinedExport))
    ]
    assert undefined == []
    if not run:
        return
    script = tmp_path / "block.py"
    script.write_text(code)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("VITALLY_")}
    environment.update(VITALLY_HOST=receiver.url, VITALLY_WRITE_KEY="test-token")
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    expected = next((count for marker, count in DELIVERS.items() if marker in code), 0)
    assert len(receiver.messages) == expected, result.stderr
