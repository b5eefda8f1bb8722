"""One loader from parsed TOML / JSON tables to keyword-only dataclasses: recipes, trainer configs and the
dataset's documents all go through `load`, so all of them are typed, range-checked and report every problem
of a table at once.

- Types come from the annotations: `int`, `float` (an int is accepted), `str`, `bool`, `X | None`,
  `tuple[X, ...]`, `tuple[X, Y]`, `list[X]`, `dict[str, X]`, `Any` and nested dataclasses.
- Ranges and choices come from `setting(default, ge=..., le=..., choices=..., pattern=...)`; `choices` may be
  a function, called when a value is checked (the names of a registry that plugins fill).
- Cross-field rules come from the class's own `problems() -> list[str]` method, listed with the range problems;
  a rule that fails on a value out of range (divides by a `patch_size` of 0) is left out, as the range
  problem names that value.
- Unknown keys are problems, never ignored.
- The command line changes a file's table before it is loaded (`with_command_line`: an option by its dotted key,
  `--set KEY=VALUE` with a TOML value), so a value typed there is checked exactly as one in the file.
- A shipped TOML file (a recipe of `manifests/`, a config of `trainer/configs/`) is named by its file name less
  `.toml` (`named_file`, `shipped_files`, `opening_line`).

`ConfigError` is the one error of bad user input (recipe, trainer config, options, paths) in pipeline and
trainer alike: the CLI prints it and exits 2, and nothing has been written.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """Bad user input: every problem found, in one message (exit code 2, nothing written)."""

    def __init__(self, problems: str | Sequence[str], heading: str = "") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            text = f"{heading}: {self.problems[0]}" if heading else self.problems[0]
        else:
            head = f"{heading}: {len(self.problems)} problems" if heading else f"{len(self.problems)} problems"
            text = head + "".join(f"\n  - {p}" for p in self.problems)
        super().__init__(text)


def setting(
    default: Any = _MISSING,
    *,
    default_factory: Any = _MISSING,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    pattern: str | None = None,
) -> Any:
    """A dataclass field with its allowed values (checked by `load` and `problems_of`)."""
    allowed = choices if callable(choices) else (tuple(choices) if choices else None)
    rules = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": allowed, "pattern": pattern}
    meta = {"rules": {k: v for k, v in rules.items() if v is not None}}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def load(cls: type[T], raw: Any, where: str = "") -> T:
    """Build `cls` from a parsed table; raises ConfigError listing every problem found."""
    problems: list[str] = []
    value = _dataclass(cls, raw, where, problems)
    if problems or value is None:
        raise ConfigError(problems or [f"{where or 'table'}: invalid"])
    return typing.cast(T, value)


def problems_of(obj: Any, where: str = "") -> list[str]:
    """Range, choice and cross-field problems of an already built dataclass tree (e.g. after overrides)."""
    found: list[str] = []
    for f in dataclasses.fields(obj):
        value, name = getattr(obj, f.name), _join(where, f.name)
        found += _rule_problems(name, value, f.metadata.get("rules", {}))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            found += problems_of(value, name)
    return found + _cross_field(obj, where, in_range=not found)


def validate(obj: Any, heading: str = "") -> None:
    """Raise ConfigError with every problem of `obj` (a built dataclass tree), if any."""
    found = problems_of(obj)
    if found:
        raise ConfigError(found, heading)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file as a table; missing, unreadable, non-UTF-8 or invalid TOML is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist or is not a file")
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{what} {path} is not valid TOML: {err}") from None
    except RecursionError:  # tomllib parses nested arrays and inline tables by recursion
        raise ConfigError(f"{what} {path} nests arrays or tables too deeply to be read") from None
    except OSError as err:
        raise ConfigError(f"{what} {path} cannot be read: {err.strerror}") from None


def to_plain(obj: Any) -> Any:
    """Dataclass tree -> plain JSON-able values (tuples become lists, paths strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        to_dict = getattr(obj, "to_dict", None)
        if callable(to_dict):
            return to_dict()
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def with_command_line(
    table: Mapping[str, Any], overrides: Mapping[str, Any], sets: Sequence[str]
) -> tuple[dict[str, Any], list[str]]:
    """`table` (a file's, or a config's `to_plain`) with the command line's values set, for `load` to check as it
    checks a file: `overrides` by dotted key (`{"train.steps": 3}`; None keeps the table's value), then each
    `--set KEY=VALUE` in order (VALUE a TOML value: `3e-4`, `8`, `true`, `"text"`, `[1, 2]`; a table value is
    merged key by key). Returns the new table and the problems of the `--set` items themselves."""
    pairs, problems = _assignments(sets)
    changed = dict(table)
    for key, value in [*((k, v) for k, v in overrides.items() if v is not None), *pairs]:
        changed = _set_key(changed, key.split("."), value, "", problems)
    return changed, problems


def named_file(value: str | Path, folder: Path, what: str) -> Path:
    """`value` as a path when it is a file, else as the name of a TOML file shipped in `folder` (`smoke` is
    `folder/smoke.toml`); neither is a ConfigError that lists the shipped names."""
    if Path(value).is_file():
        return Path(value)
    shipped = shipped_files(folder)
    if str(value) in shipped:
        return shipped[str(value)]
    raise ConfigError(f"{what} {value} is neither a file nor a shipped name; known names: {', '.join(shipped)}")


def shipped_files(folder: Path) -> dict[str, Path]:
    """The TOML files of `folder` by name (the file name less `.toml`), in name order."""
    return {p.stem: p.resolve() for p in sorted(folder.glob("*.toml"), key=lambda p: p.stem)}


def opening_line(path: Path) -> str:
    """The first line of a TOML file's opening comment: its one-line description ("" without one)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            return line.strip().removeprefix("#").strip() if line.lstrip().startswith("#") else ""
    return ""


# ------------------------------------------------------------------------------------------- internals


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


_KEY = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")  # a dotted key of bare TOML names: optim.base_lr
_NOT_TOML = object()


def _assignments(items: Sequence[str]) -> tuple[list[tuple[str, Any]], list[str]]:
    """`KEY=VALUE` items -> (key, value) pairs, and a problem for each item that is not one."""
    pairs: list[tuple[str, Any]] = []
    problems: list[str] = []
    for item in items:
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep or not _KEY.fullmatch(key):
            problems.append(f"--set takes KEY=VALUE with a dotted KEY (e.g. optim.base_lr=3e-4), got {item!r}")
            continue
        value = _toml_value(text)
        if value is _NOT_TOML:
            problems.append(
                f'--set {key}: {text!r} is not a TOML value (a number, true or false, "text" in quotes, [a, list])'
            )
            continue
        pairs.append((key, value))
    return pairs, problems


def _toml_value(text: str) -> Any:
    try:
        parsed = tomllib.loads(f"value = {text}")
    except (tomllib.TOMLDecodeError, RecursionError):
        return _NOT_TOML
    return parsed["value"] if list(parsed) == ["value"] else _NOT_TOML


def _set_key(table: dict[str, Any], parts: list[str], value: Any, where: str, problems: list[str]) -> dict[str, Any]:
    """A copy of `table` with `parts` (a dotted key) set; the tables on the way are copied, never changed."""
    head, rest = parts[0], parts[1:]
    name, old = _join(where, head), table.get(head)
    if not rest and not (isinstance(old, dict) and isinstance(value, dict)):
        return {**table, head: value}
    if old is not None and not isinstance(old, dict):
        problems.append(f"{name} is {_kind(old)}, not a table: {_join(name, '.'.join(rest))} cannot be set")
        return table
    child = dict(old or {})
    if rest:
        child = _set_key(child, rest, value, name, problems)
    else:  # a table set on a table: merged key by key
        for key, item in value.items():
            child = _set_key(child, [key], item, name, problems)
    return {**table, head: child}


def _dataclass(cls: type, raw: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"{where or 'top level'} must be a table, got {_kind(raw)}")
        return None
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in sorted(set(raw) - set(fields), key=str):
        problems.append(f"unknown key {_join(where, str(key))!r}; allowed here: {', '.join(sorted(fields))}")
    values, before, ranges = {}, len(problems), []
    for name, f in fields.items():
        if name not in raw:
            if f.default is _MISSING and f.default_factory is _MISSING:
                problems.append(f"{_join(where, name)} is missing")
            continue
        value = _coerce(hints[name], raw[name], _join(where, name), problems)
        ranges += _rule_problems(_join(where, name), value, f.metadata.get("rules", {}))
        values[name] = value
    if len(problems) > before:  # wrong types or keys: the table cannot be built, its rules cannot run
        problems += ranges
        return None
    obj = _construct(cls, values, where, problems, in_range=not ranges)
    problems += ranges
    return None if ranges else obj


def _construct(cls: type, values: dict[str, Any], where: str, problems: list[str], in_range: bool) -> Any:
    try:
        obj = cls(**values)
    except (TypeError, ValueError) as err:
        problems.append(f"{where or cls.__name__}: {err}")
        return None
    problems += _cross_field(obj, where, in_range)
    return obj


def _cross_field(obj: Any, where: str, in_range: bool) -> list[str]:
    """`obj.problems()`, its cross-field rules. With a value out of range a rule may fail on it (`patch_size = 0`
    divides by zero): its findings are then left out, as the range problem already names the value."""
    rules = getattr(obj, "problems", None)
    if not callable(rules):
        return []
    try:
        found = rules()
    except Exception:
        if in_range:
            raise
        return []
    return [f"{where}: {p}" if where else p for p in found]


def _coerce(hint: Any, value: Any, where: str, problems: list[str]) -> Any:
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return _dataclass(typing.cast(type, hint), value, where, problems)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return _coerce(rest[0], value, where, problems) if len(rest) == 1 else value
    if origin in (tuple, list):
        return _sequence(origin, args, value, where, problems)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            problems.append(f"{where} must be a table with string keys, got {_kind(value)}")
            return value
        return {k: _coerce(args[1], v, f"{where}.{k}", problems) for k, v in value.items()}
    return _scalar(hint, value, where, problems)


def _sequence(origin: Any, args: tuple[Any, ...], value: Any, where: str, problems: list[str]) -> Any:
    if not isinstance(value, list | tuple):
        problems.append(f"{where} must be a list, got {_kind(value)}")
        return value
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(value) != len(args):
            problems.append(f"{where} needs {len(args)} values, got {len(value)}")
            return tuple(value)
        return tuple(_coerce(a, v, f"{where}[{i}]", problems) for i, (a, v) in enumerate(zip(args, value, strict=True)))
    item = args[0] if args else Any
    items = [_coerce(item, v, f"{where}[{i}]", problems) for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _scalar(hint: Any, value: Any, where: str, problems: list[str]) -> Any:
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            problems.append(f"{where} must be a finite number, got {value!r}")
        return float(value)
    if isinstance(hint, type) and (
        not isinstance(value, hint) or (isinstance(value, bool) and hint is not bool and hint is not object)
    ):
        problems.append(f"{where} must be {_type_name(hint)}, got {_kind(value)}")
    return value


def _rule_problems(where: str, value: Any, rules: dict[str, Any]) -> list[str]:
    if value is None or not rules:
        return []
    found = []
    if "choices" in rules:
        choices = rules["choices"]() if callable(rules["choices"]) else rules["choices"]
        if value not in choices:
            found.append(f"{where} must be one of {', '.join(map(str, choices))}; got {value!r}")
    if "pattern" in rules and not (isinstance(value, str) and re.fullmatch(rules["pattern"], value)):
        found.append(f"{where} must match {rules['pattern']}; got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        for rule, ok, text in (
            ("ge", lambda v, b: v >= b, ">="),
            ("gt", lambda v, b: v > b, ">"),
            ("le", lambda v, b: v <= b, "<="),
            ("lt", lambda v, b: v < b, "<"),
        ):
            if rule in rules and not ok(value, rules[rule]):
                bound = rules[rule]  # an int in full (2^32 is 4294967296, never 4.29497e+09)
                found.append(
                    f"{where} must be {text} {bound if isinstance(bound, int) else f'{bound:g}'}; got {value!r}"
                )
    return found


def _type_name(hint: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, hint.__name__)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return repr(value) if isinstance(value, int | float | str) else type(value).__name__
