"""Reference tables generated from the code, so the docs cannot fall behind it.

- ``settings-table``: every field of ``container_manager.conf.Settings`` with its default and
  the ``#:`` comment above it.
- ``command-help NAME``: the ``--help`` of a management command and of each of its
  subcommands, as ``manage.py`` prints it.
- ``model-fields DOTTED.MODEL``: a model's fields, their types and help texts.
- ``error-tree``: the classes of ``container_manager.exceptions`` as the tree they form.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import io
from collections.abc import Iterable
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer


def _literal(text: str) -> nodes.literal:
    return nodes.literal(text, text)


def _paragraph(*children: nodes.Node) -> nodes.paragraph:
    para = nodes.paragraph()
    para.extend(children)
    return para


def _table(headers: list[str], rows: Iterable[list[nodes.Node]], widths: list[int]) -> nodes.table:
    table = nodes.table()
    group = nodes.tgroup(cols=len(headers))
    table += group
    group.extend(nodes.colspec(colwidth=w) for w in widths)
    head = nodes.thead()
    group += head
    head_row = nodes.row()
    head += head_row
    for title in headers:
        head_row += nodes.entry("", _paragraph(nodes.Text(title)))
    body = nodes.tbody()
    group += body
    for cells in rows:
        row = nodes.row()
        body += row
        for cell in cells:
            row += nodes.entry("", cell if isinstance(cell, nodes.paragraph) else _paragraph(cell))
    return table


class SettingsTable(Directive):
    """Every ``CONTAINER_MANAGER`` key, its default and its meaning."""

    def run(self) -> list[nodes.Node]:
        from container_manager.conf import Settings

        docs = ModuleAnalyzer.for_module("container_manager.conf").find_attr_docs()
        defaults = Settings()
        rows = []
        for field in dataclasses.fields(Settings):
            lines = docs.get(("Settings", field.name))
            if not lines:
                raise self.error(f"Settings.{field.name} has no #: comment to document it")
            text = " ".join(line.strip() for line in lines if line.strip())
            rows.append(
                [
                    _literal(field.name),
                    _literal(_default(getattr(defaults, field.name))),
                    _paragraph(*_inline_literals(text)),
                ]
            )
        return [_table(["key", "default", "meaning"], rows, [18, 18, 64])]


def _default(value: object) -> str:
    """A default as it would be written in settings; a mapping of dotted paths by its keys."""
    if isinstance(value, dict) and value and len(repr(value)) > 40:
        return "{" + ", ".join(f"{key!r}: ..." for key in value) + "}"
    return repr(value)


def _inline_literals(text: str) -> list[nodes.Node]:
    """``double backticks`` in a comment become literals; the rest stays text."""
    parts = text.split("``")
    return [_literal(p) if i % 2 else nodes.Text(p) for i, p in enumerate(parts) if p]


class CommandHelp(Directive):
    """The ``--help`` of a management command and of each subcommand."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        from django.core.management import get_commands, load_command_class

        name = self.arguments[0]
        app = get_commands().get(name)
        if app is None:
            raise self.error(f"no management command {name!r}")
        parser = load_command_class(app, name).create_parser("manage.py", name)
        result: list[nodes.Node] = [_help_block(parser)]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    result.append(_paragraph(nodes.strong(text=f"{name} {sub_name}")))
                    result.append(_help_block(sub))
        return result


#: Options every Django command has: left out of each block (the page says so once).
_DJANGO_OPTIONS = {
    "version", "verbosity", "settings", "pythonpath", "traceback", "no_color", "force_color",
    "skip_checks",
}  # fmt: skip


def _help_block(parser: argparse.ArgumentParser) -> nodes.literal_block:
    for action in parser._actions:
        if action.dest in _DJANGO_OPTIONS:
            action.help = argparse.SUPPRESS
    out = io.StringIO()
    # A fixed width, so the page does not depend on the terminal that built it.
    parser.formatter_class = _Formatter
    parser.print_help(out)
    text = out.getvalue().rstrip()
    return nodes.literal_block(text, text)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs["width"] = 92
        super().__init__(prog, **kwargs)


class ModelFields(Directive):
    """A model's concrete fields: name, type, and what it holds."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        module_name, _, class_name = self.arguments[0].rpartition(".")
        model = getattr(importlib.import_module(module_name), class_name)
        comments = ModuleAnalyzer.for_module(model.__module__).find_attr_docs()
        rows = []
        for field in model._meta.concrete_fields:
            kind = field.get_internal_type()
            if field.is_relation:
                kind = f"{kind} to {field.related_model.__name__}"
            comment = comments.get((class_name, field.name))
            words = str(field.help_text) or " ".join(line.strip() for line in comment or [])
            if not words and field.name != "id":
                raise self.error(f"{class_name}.{field.name} has no help_text and no #: comment")
            words = words or "The primary key."
            if field.choices and not field.is_relation:
                words += " One of: " + ", ".join(str(value) for value, _ in field.choices) + "."
            rows.append([_literal(field.name), nodes.Text(kind), _paragraph(nodes.Text(words))])
        return [_table(["field", "type", "meaning"], rows, [22, 22, 56])]


class ErrorTree(Directive):
    """The error classes of ``container_manager.exceptions``, nested as they derive."""

    def run(self) -> list[nodes.Node]:
        from container_manager import exceptions

        classes = [getattr(exceptions, name) for name in exceptions.__all__]
        return [self._branch(exceptions.ContainerManagerError, classes)]

    def _branch(self, parent: type, classes: list[type]) -> nodes.bullet_list:
        items = nodes.bullet_list()
        item = nodes.list_item()
        doc = inspect.getdoc(parent) or ""
        first = " ".join(doc.split("\n\n")[0].split())
        words = _inline_literals(f": {first}") if first else []
        item += _paragraph(_literal(parent.__name__), *words)
        children = [c for c in classes if parent in c.__bases__]
        if children:
            nested = nodes.bullet_list()
            for child in children:
                nested.extend(self._branch(child, classes).children)
            item += nested
        items += item
        return items


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("settings-table", SettingsTable)
    app.add_directive("command-help", CommandHelp)
    app.add_directive("model-fields", ModelFields)
    app.add_directive("error-tree", ErrorTree)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
