"""Every ```python block of the README is complete as pasted: it compiles, names nothing undefined
(pyflakes), and, unless an HTML comment right above it says ``not run``, runs in a fresh interpreter
against a local receiver (the environment points the library at it)."""

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

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(?:^(<!--[^\n]*-->)\n)?^```python\n(.*?)^```", re.S | re.M)


def blocks() -> List[Tuple[int, str, bool]]:
    """``(line, code, run)`` for each python block of the README."""
    text = README.read_text()
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start(2)) + 1
        found.append((line, match.group(2), not (match.group(1) or "").startswith("<!-- not run")))
    return found


BLOCKS = blocks()

DELIVERS: Dict[str, int] = {
    'analytics.organization("org-1"': 6,  # the quickstart: one message of each type
    'Client("my-token", subdomain="acme", upload_interval=1.0)': 1,
    'analytics.enqueue({"type": "track"': 1,
    'AsyncClient("my-token", subdomain="acme")': 1,
    "import analytics_vitally.segment as analytics   # was": 3,  # held identify, then group: account + user, track
}
"""Blocks that send, by a line they hold: how many messages reach the receiver."""


class AnyKey(Receiver):
    """The local receiver, taking whatever write key a README example uses ("...", "my-token")."""

    def answer(self, request: Request) -> Reply:
        self.token = request.headers.get("authorization", "")[len("Basic ") :]
        return super().answer(request)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with AnyKey() as running:
        yield running


def test_the_readme_has_python_blocks_and_each_sending_one_is_known() -> None:
    assert len(BLOCKS) >= 15
    for line in DELIVERS:
        assert sum(line in code for _, code, run in BLOCKS if run) == 1, line


@pytest.mark.parametrize("line,code,run", BLOCKS, ids=[f"README.md:{line}" for line, _, _ in BLOCKS])
def test_a_readme_block_is_complete_as_pasted(
    line: int, code: str, run: bool, receiver: Receiver, tmp_path: Path
) -> None:
    tree = ast.parse(code, f"README.md:{line}")  # a SyntaxError fails here
    undefined = [
        str(message)
        for message in checker.Checker(tree, filename=f"README.md:{line}").messages
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
