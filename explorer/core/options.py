"""One description per setting: a config dataclass's field metadata becomes its CLI option and its widget's words.

Each field of a settings dataclass (`HealConfig`, `SweepSettings`, `RepairConfig`) is declared with
`setting(default, help, ...)`: the help text (and, where needed, the flag, the choices, the page's
label) sits beside the default, as peft documents its config dataclasses with
`field(metadata={"help": ...})`. From that one list, as mergekit builds its command line from its
options model, `add_options` writes the argparse options, `given` reads back only the values the user
typed (so a preset or recipe keeps every value not given), and `widget` gives a page its label and
help. A new field therefore reaches the CLI, the page's tooltip and the config at once, and a test
(tests/test_options.py) fails when a field has no option or no help.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Callable

SHARED = "shared"  # `cli` metadata: the command's shared option with the field's name sets it (model, task options)


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            flag: str | None = None, choices: tuple | None = None, label: str | None = None,
            parse: Callable[[str], Any] | None = None, cli: str | None = None, exclusive: str | None = None) -> Any:
    """A dataclass field described once. `flag`: the option's name (default --field-name); `choices`:
    the values allowed; `label`: the page's widget label; `parse`: turns the typed text into the value
    (tuples default to comma-separated items); `cli=SHARED`: set by the command's shared option of the
    same name rather than generated here; `exclusive`: fields sharing this name are mutually exclusive."""
    extra = {"flag": flag, "choices": choices, "label": label, "parse": parse, "cli": cli, "exclusive": exclusive}
    metadata = {"help": help, **{key: value for key, value in extra.items() if value is not None}}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def flag(item: dataclasses.Field) -> str:
    return item.metadata.get("flag") or "--" + item.name.replace("_", "-")


def _value_type(cls: type, item: dataclasses.Field) -> Any:
    """The annotation without None: `int | None` -> int, `tuple[str, ...]` -> tuple[str, ...], `str | dict` -> str."""
    hint = typing.get_type_hints(cls)[item.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _default(item: dataclasses.Field) -> Any:
    return item.default_factory() if item.default_factory is not dataclasses.MISSING else item.default


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_options(parser: argparse.ArgumentParser, cls: type, names: tuple[str, ...] | None = None, prefix: str = "") -> None:
    """An option per field of `cls` (or of `names`), except those the command's shared options set.
    Every option defaults to None so `given` can tell what the user typed; the help names the
    dataclass's default instead. `prefix` keeps the parsed values of a second settings class apart
    when two share a field name (classify's scoring and finetuning batch sizes)."""
    groups: dict[str, Any] = {}
    for item in dataclasses.fields(cls):
        if (names is not None and item.name not in names) or item.metadata.get("cli") == SHARED:
            continue
        default, kind = _default(item), _value_type(cls, item)
        text = item.metadata["help"]
        if default not in (None, "", {}) and "default" not in text:
            text += f" [default: {_shown(default)}]"
        name = flag(item)
        options: dict[str, Any] = {"dest": prefix + item.name, "default": None, "help": text.replace("%", "%%")}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = kind if kind in (int, float) else str
            options["metavar"] = "A,B,..." if typing.get_origin(kind) is tuple else name.lstrip("-").upper().replace("-", "_")
        if "choices" in item.metadata:
            options["choices"] = item.metadata["choices"]
            options.pop("metavar", None)
        target = parser
        if group := item.metadata.get("exclusive"):
            target = groups[group] = groups.get(group) or parser.add_mutually_exclusive_group()
        target.add_argument(name, **options)


def given(cls: type, args: argparse.Namespace, prefix: str = "", **extra: Any) -> dict:
    """The fields the user set on the command line (typed text parsed), plus `extra` values that are not
    empty: overrides for a dataclass's defaults, a preset or a recipe, which keep every other value.
    `prefix`: the one `add_options` was given."""
    values = {}
    for item in dataclasses.fields(cls):
        value = extra[item.name] if item.name in extra else getattr(args, prefix + item.name, None)
        if value is None or (item.name in extra and not value):
            continue
        kind = _value_type(cls, item)
        if isinstance(value, str) and (parse := item.metadata.get("parse")):
            value = parse(value)
        elif isinstance(value, str) and typing.get_origin(kind) is tuple:
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        values[item.name] = value
    return values


def widget(cls: type, name: str) -> dict:
    """A page widget's `label` and `help` for field `name`: the same words as the CLI's help."""
    item = next(f for f in dataclasses.fields(cls) if f.name == name)
    return {"label": item.metadata.get("label") or name.replace("_", " ").capitalize(), "help": item.metadata["help"]}
