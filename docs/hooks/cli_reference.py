"""MkDocs hook: the CLI reference, rendered at build time from ``analytics_vitally.cli``'s own argparse parser.

``docs/reference/cli.md`` holds the marker ``<!-- cli-reference -->``; this hook replaces it with the
``--help`` of the command and of each subcommand, so a subcommand added to the parser appears
without editing the page. A marker or parser that cannot be found is a warning, which fails
``mkdocs build --strict``.
"""

from __future__ import annotations

import argparse
import logging
import os
from contextlib import contextmanager
from typing import Any, Iterator, List, Tuple

MARKER = "<!-- cli-reference -->"
PAGE = "reference/cli.md"
WIDTH = "100"

log = logging.getLogger("mkdocs.hooks.cli_reference")


@contextmanager
def _help_environment() -> Iterator[None]:
    """Help text wrapped at a fixed width and without colour, whatever terminal runs the build."""
    saved = {name: os.environ.get(name) for name in ("COLUMNS", "NO_COLOR")}
    os.environ.update(COLUMNS=WIDTH, NO_COLOR="1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def commands(parser: argparse.ArgumentParser) -> List[Tuple[str, str, argparse.ArgumentParser]]:
    """``(name, one-line help, parser)`` for each subcommand of ``parser``, in the order it lists them."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, subparser in action.choices.items():
                found.append((name, summaries.get(name, ""), subparser))
    return found


def render() -> str:
    """The Markdown for the whole command line: the command's help, then one section per subcommand."""
    from analytics_vitally import cli

    parser = cli._parser()
    with _help_environment():
        parts = [f"## `{parser.prog}`\n", f"```text\n{parser.format_help().rstrip()}\n```\n"]
        for name, summary, subparser in commands(parser):
            parts.append(f"## `{parser.prog} {name}`\n")
            if summary:
                parts.append(f"{summary[:1].upper()}{summary[1:]}.\n")
            parts.append(f"```text\n{subparser.format_help().rstrip()}\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown:
        log.warning("%s lost its %s marker: the CLI reference was not generated", PAGE, MARKER)
        return markdown
    try:
        generated = render()
    except Exception as error:  # a warning fails the strict build, with the reason
        log.warning("the CLI reference could not be generated from analytics_vitally.cli: %r", error)
        return markdown
    return markdown.replace(MARKER, generated)
