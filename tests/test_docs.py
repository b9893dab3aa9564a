"""The documentation site (mkdocs.yml, docs/) and the README front page.

- Every public name has a ``::: name`` directive on an API reference page (no MkDocs needed), and
  after a strict build an anchor with its path on a rendered page (with the ``docs`` extra only).
- The CLI reference is generated from the parser, so it shows every subcommand.
- The README stays a front page whose relative links work on a code host and in the sdist, and
  whose set-up and test commands are the ones .ci/run runs.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator, List, Set, Tuple

import pytest

from analytics_vitally import cli

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.M)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _public_modules() -> Tuple[str, ...]:
    """``PUBLIC_MODULES`` as the griffe extension declares it (read, not imported: it needs griffe)."""
    tree = ast.parse((ROOT / "docs" / "hooks" / "griffe_public.py").read_text())
    for node in tree.body:
        names = [getattr(target, "id", "") for target in getattr(node, "targets", [])]
        if isinstance(node, ast.Assign) and "PUBLIC_MODULES" in names:
            return tuple(ast.literal_eval(node.value))
    raise AssertionError("docs/hooks/griffe_public.py declares no PUBLIC_MODULES")


PUBLIC_MODULES = _public_modules()
"""Modules whose ``__all__`` is public: each of its names must be in the reference."""

RE_EXPORTED = ("analytics_vitally.aio", "analytics_vitally.errors", "analytics_vitally.diagnosis")
"""Modules whose names may be documented where the package exports them (``analytics_vitally.AsyncClient``)."""


def public_names() -> Dict[str, Set[str]]:
    """Each public name's path, with the paths under which documenting it counts."""
    names: Dict[str, Set[str]] = {}
    for path in PUBLIC_MODULES:
        try:
            module = importlib.import_module(path)
        except ImportError:
            continue  # a module not written (yet)
        for name in module.__all__:
            accepted = {f"{path}.{name}"}
            if path in RE_EXPORTED:
                accepted.add(f"analytics_vitally.{name}")
            names[f"{path}.{name}"] = accepted
    plugin = importlib.import_module("analytics_vitally.pytest_plugin")
    for name in ("vitally_receiver", "vitally_capture"):  # the fixtures the package installs
        assert callable(getattr(plugin, name))
        names[f"analytics_vitally.pytest_plugin.{name}"] = {f"analytics_vitally.pytest_plugin.{name}"}
    return names


def directives() -> Set[str]:
    """The objects the reference pages render (``::: path``)."""
    return {path for page in REFERENCE.glob("*.md") for path in DIRECTIVE.findall(page.read_text(encoding="utf-8"))}


def missing(documented: Set[str]) -> List[str]:
    return sorted(name for name, accepted in public_names().items() if not accepted & documented)


def test_every_public_name_is_in_the_api_reference() -> None:
    names = public_names()
    for expected in ("analytics_vitally.track", "analytics_vitally.aio.AsyncClient", "analytics_vitally.segment.page"):
        assert expected in names
    assert "analytics_vitally.importer.run_import" in names and "analytics_vitally.testing.capture" in names
    assert missing(directives()) == []


def test_a_public_name_left_out_of_the_reference_is_found() -> None:
    documented = directives()
    assert missing(documented - {"analytics_vitally.track"}) == ["analytics_vitally.track"]
    assert missing(documented - {"analytics_vitally.AsyncClient"}) == [
        "analytics_vitally.AsyncClient",
        "analytics_vitally.aio.AsyncClient",
    ]
    assert missing(documented - {"analytics_vitally.importer.Importer"}) == ["analytics_vitally.importer.Importer"]


def test_the_doctor_is_in_the_reference_when_it_exists() -> None:
    import analytics_vitally

    if "doctor" not in analytics_vitally.__all__:
        pytest.skip("analytics_vitally.doctor is not written yet")
    assert "analytics_vitally.doctor" in directives()


def test_every_reference_directive_names_a_real_object() -> None:
    for path in directives():
        module, _, name = path.rpartition(".")
        try:
            importlib.import_module(path)
        except ImportError:
            assert hasattr(importlib.import_module(module), name), path


# The CLI reference ----------------------------------------------------------------------


def load_hook(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", ROOT / "docs" / "hooks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def subcommands() -> List[str]:
    parser = cli._parser()
    found = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return list(found[0].choices)


def test_the_cli_reference_shows_every_subcommand_from_the_parser() -> None:
    rendered = load_hook("cli_reference").render()
    names = subcommands()
    assert {"import", "serve", "spool"} <= set(names)
    assert "usage: analytics-vitally [-h]" in rendered
    for name in names:
        assert f"## `analytics-vitally {name}`" in rendered
        assert f"usage: analytics-vitally {name} [-h]" in rendered
    assert "--checkpoint-every N" in rendered and "--rekey" in rendered  # options, from the parser itself


def test_the_cli_page_holds_the_marker_the_hook_replaces() -> None:
    hook = load_hook("cli_reference")
    assert (ROOT / "docs" / hook.PAGE).read_text(encoding="utf-8").count(hook.MARKER) == 1


# The README front page ------------------------------------------------------------------


def test_the_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200


def slug(heading: str) -> str:
    """A heading's anchor as a code host and MkDocs make it (for plain headings)."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"\s", "-", text)


def anchors(page: Path) -> Set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {slug(heading) for heading in re.findall(r"^#+ (.+)$", text, re.M)}


def relative_links(page: Path) -> Iterator[Tuple[str, Path, str]]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        yield target, (page.parent / path).resolve() if path else page, anchor


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_relative_links_point_at_files_and_headings_that_exist(page: str) -> None:
    links = list(relative_links(ROOT / page))
    assert len(links) >= 10
    for target, path, anchor in links:
        assert path.is_file(), f"{page}: {target}"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page}: {target}"


def test_the_readme_links_to_every_page_of_the_site() -> None:
    linked = {path for _, path, _ in relative_links(ROOT / "README.md")}
    pages = {
        page.resolve()
        for page in (ROOT / "docs").glob("**/*.md")
        if page.name not in ("index.md", "architecture.md", "changelog.md", "benchmarks.md")  # included files
    }
    assert pages - linked == set()


def develop_commands(page: Path) -> Tuple[str, str]:
    """The set-up and test commands a page's "Develop" part gives (the blocks after their labels)."""
    text = page.read_text(encoding="utf-8")
    setup = re.search(r"^Set-up command[^\n]*\n\n```sh\n(.+?)\n```", text, re.M | re.S)
    test = re.search(r"^Test command:\n\n```sh\n(.+?)\n```", text, re.M | re.S)
    assert setup and test, page
    return setup.group(1), test.group(1)


def test_the_readme_develop_commands_are_what_ci_runs() -> None:
    run = ROOT / ".ci" / "run"
    if not run.exists():
        pytest.skip(".ci/run is not in the sdist")
    setup, test = develop_commands(ROOT / "README.md")
    assert (setup, test) == develop_commands(ROOT / "docs" / "develop.md")
    ci_lines = run.read_text(encoding="utf-8").splitlines()
    assert setup.split(" && ")[-1] in ci_lines  # the venv is CI's own; the install is the same line
    assert test in ci_lines
    assert "docs" in setup  # the docs tests below run in CI's first venv


# The built site -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "pymdownx"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the docs extra is not installed (no {module}): pip install -e '.[docs]'")
    built = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(built)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return built


def test_the_strict_build_renders_every_public_name_with_its_anchor(site: Path) -> None:
    html = "".join(page.read_text(encoding="utf-8") for page in (site / "reference").glob("**/*.html"))
    ids = set(re.findall(r'id="([\w.]+)"', html))
    absent = [name for name, accepted in public_names().items() if not accepted & ids]
    assert absent == []


def test_the_built_module_functions_show_their_real_signatures(site: Path) -> None:
    html = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    text = re.sub(r"<[^>]+>", "", html)
    assert "_proxy(Client.track)" not in text  # read by inspection, not as an attribute
    assert "Send a track message" in text.replace("``", "")


def test_the_built_cli_page_has_every_subcommand(site: Path) -> None:
    html = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    for name in subcommands():
        assert f"usage: analytics-vitally {name}" in html


def test_the_built_changelog_is_the_changelog(site: Path) -> None:
    html = (site / "changelog" / "index.html").read_text(encoding="utf-8")
    assert "Unreleased" in html and "--8&lt;--" not in html and "--8<--" not in html
