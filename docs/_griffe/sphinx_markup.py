"""Griffe extension: render the reST bits of our Google-style docstrings as Markdown.

The docstrings follow PyTorch's convention (``:math:`x```, ``.. math::`` blocks, ``text::``
literal blocks, ``:func:``/``:class:`` roles), which ``help()`` and Sphinx read well but
Markdown shows verbatim. This extension rewrites a copy of each docstring for the site only:

* ``:math:`x``` becomes ``\\(x\\)`` and a ``.. math::`` block becomes ``$$ ... $$`` blocks
  (one per blank-line separated group), both rendered by ``pymdownx.arithmatex``;
* a paragraph ending in ``::`` followed by an indented block becomes a fenced Python block;
* ``:func:`fairloss.x``` (and the other Python roles) becomes a cross-reference for public
  ``fairloss`` paths, and inline code for anything else (torch has no inventory offline).

Configured in ``mkdocs.yml`` under the mkdocstrings handler's ``extensions`` option.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_PY_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj):`(~?)([^`]+)`")


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _indented_block(lines: list[str], start: int, parent_indent: int) -> int:
    """Index one past the block of lines indented deeper than ``parent_indent`` from ``start``."""
    end = start
    while end < len(lines) and (not lines[end].strip() or _indent_of(lines[end]) > parent_indent):
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    return end


def _math_blocks(body: list[str], indent: str) -> list[str]:
    groups: list[list[str]] = [[]]
    for line in body:
        if line.strip():
            groups[-1].append(line.strip())
        elif groups[-1]:
            groups.append([])
    rendered: list[str] = []
    for group in (group for group in groups if group):
        rendered += [f"{indent}$$", *(f"{indent}{line}" for line in group), f"{indent}$$", ""]
    return rendered[:-1]


def _code_block(body: list[str], indent: str) -> list[str]:
    depth = min(_indent_of(line) for line in body if line.strip())
    code = [line[depth:] if line.strip() else "" for line in body]
    return [f"{indent}```python", *(f"{indent}{line}" for line in code), f"{indent}```"]


def _convert_blocks(text: str) -> str:
    lines = text.splitlines()
    output: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        stripped = line.strip()
        indent = " " * _indent_of(line)
        is_math = stripped == ".. math::"
        is_literal = stripped.endswith("::") and not stripped.startswith("..")
        if not (is_math or is_literal):
            output.append(line)
            index += 1
            continue
        end = _indented_block(lines, index + 1, _indent_of(line))
        body = lines[index + 1 : end]
        if not any(body_line.strip() for body_line in body):
            output.append(line)
            index += 1
            continue
        if is_math:
            output += _math_blocks(body, indent)
        else:
            lead = stripped[:-2].rstrip()
            if lead:
                output += [f"{indent}{lead}:", ""]
            output += _code_block(body, indent)
        index = end
    return "\n".join(output)


def _convert_roles(text: str) -> str:
    text = _MATH_ROLE.sub(lambda match: "\\(" + match.group(1) + "\\)", text)

    def reference(match: re.Match[str]) -> str:
        shorten, path = match.group(1), match.group(2)
        shown = path.rsplit(".", 1)[-1] if shorten else path
        public = path.startswith("fairloss.") and not any(
            part.startswith("_") for part in path.split(".")
        )
        return f"[`{shown}`][{path}]" if public else f"`{shown}`"

    return _PY_ROLE.sub(reference, text)


def sphinx_to_markdown(text: str) -> str:
    """The site's Markdown for one docstring written with reST math, roles and literal blocks."""
    return _convert_roles(_convert_blocks(text))


class SphinxMarkup(griffe.Extension):
    """Rewrite every loaded docstring with :func:`sphinx_to_markdown`."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = sphinx_to_markdown(obj.docstring.value)
