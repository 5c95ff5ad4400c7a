"""Prompt templates of task files: Jinja2 as lm-evaluation-harness 0.4.13 renders it, in a sandbox.

lm-eval renders ``doc_to_text`` / ``doc_to_choice`` / ``doc_to_target`` with a Jinja2 ``Environment`` that has
``undefined=StrictUndefined`` (a missing field is an error, not ""), ``keep_trailing_newline=True`` and one extra
filter, ``regex_replace(pattern, repl, count=0)`` (``re.sub``). :data:`ENV` is the same environment made a
:class:`~jinja2.sandbox.SandboxedEnvironment`: a template can read a row's fields (``{{ question }}``,
``{{ choices.text[0] }}``, ``{{ question.strip() }}``) and use Jinja's filters, but cannot reach Python
internals (attributes starting with ``_``, ``__class__``, ...), import, read files or include other templates.
So an lm-eval prompt can be copied into a task file as it is, and the same text comes out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment

__all__ = ["ENV", "Expression", "Template", "TemplateError", "regex_replace"]


def regex_replace(string: str, pattern: str, repl: str, count: int = 0) -> str:
    """lm-eval's ``regex_replace`` Jinja filter: ``re.sub(pattern, repl, string, count=count)``."""
    return re.sub(pattern, repl, string, count=count)


ENV = SandboxedEnvironment(undefined=StrictUndefined, keep_trailing_newline=True, autoescape=False)
ENV.filters["regex_replace"] = regex_replace

_VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_SCALARS = (str, int, float, bool, type(None))
_CACHE_SIZE = 4096


class Template:
    """One compiled template (a Jinja2 string), rendered with a row's fields as variables.

    Two common forms skip Jinja with the same result: text without ``{`` (a constant) and a lone
    ``{{ name }}`` whose value is a string. Results are remembered by the values of the variables the template
    reads (when they are plain strings and numbers) for the first few thousand distinct values, so a template
    over a field with few values (a BLiMP ``field``) is rendered once per value.

    Args:
        source (str): the template text.

    Raises:
        jinja2.TemplateSyntaxError: the text is not a valid template (its message names the problem).
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._constant = source if "{" not in source and "\r" not in source else None
        match = _VARIABLE.fullmatch(source)
        self._variable = match.group(1) if match else None
        self._template = ENV.from_string(source) if self._constant is None else None
        self._names = tuple(sorted(meta.find_undeclared_variables(ENV.parse(source)))) if self._template else ()
        self._cache: dict[tuple[Any, ...], str] = {}

    @property
    def is_constant(self) -> bool:
        """Whether the text has no template syntax (it renders as itself)."""
        return self._constant is not None

    def render(self, variables: Mapping[str, Any]) -> str:
        """The text for one row.

        Raises:
            jinja2.TemplateError: e.g. ``UndefinedError`` for a field the row lacks, ``SecurityError`` for
                something the sandbox forbids.
        """
        if self._constant is not None:
            return self._constant
        if self._variable is not None:
            value = variables.get(self._variable)
            if isinstance(value, str):
                return value
        key = None
        if all(isinstance(variables.get(n), _SCALARS) and n in variables for n in self._names):
            key = tuple((type(v := variables[n]), v) for n in self._names)
            if key in self._cache:
                return self._cache[key]
        text = self._template.render(**variables)  # type: ignore[union-attr]
        if key is not None and len(self._cache) < _CACHE_SIZE:
            self._cache[key] = text
        return text

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Template) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)


class Expression:
    """A Jinja2 expression (``label != -1``, ``split == 'val' and choices | length == 4``), true or false per row.

    Args:
        source (str): the expression, without ``{{ }}``.

    Raises:
        jinja2.TemplateSyntaxError: not a valid expression.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._expression = ENV.compile_expression(source, undefined_to_none=False)

    def __call__(self, variables: Mapping[str, Any]) -> bool:
        """Whether the row passes.

        Raises:
            jinja2.TemplateError: a field the row lacks, or something the sandbox forbids.
        """
        return bool(self._expression(**variables))

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and other.source == self.source

    def __hash__(self) -> int:
        return hash(self.source)
