"""Settings declared once: a dataclass field with its default, its help sentence, its choices and its valid
range. Everything else is read from that one declaration: the YAML dict (`to_dict`, `update`), the command-line
flags (`add_flags`, `given_flags`), the help texts, and the check (`check`) that reports the first bad value
in one line naming the flag, the value and the range.

    @dataclass
    class Heads:
        proj_dim: int = setting(2048, "output width of the projector (the embedding z)", ge=1, le=65536)
        temperature: float = setting(0.2, "temperature of the softmax over similarities", ge=1e-3, le=100)
        optimizer: str = setting("sgd", "the optimiser", choices=("sgd", "adamw", "lars"))

A subclass changes a default by declaring the field again with only its new value (`proj_dim: int = 256`):
the help, choices and range are looked up along the class's bases. Every float setting must be finite (no
nan, no inf). `choices` may be a function returning the names (a registry's `names`), read when needed.

No torch here: a parser or a config file can be read without loading any model.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import yaml

from sslab.errors import ConfigError

Choices = Sequence[str] | Callable[[], Sequence[str]]
_SPEC = "sslab.setting"


@dataclass(frozen=True)
class Rule:
    """A condition a value must meet beyond its bounds, and the words that state it in a message."""

    holds: Callable[[Any], bool]
    text: str  # completes "must be ...": "two numbers min <= max"


@dataclass(frozen=True)
class Spec:
    """What a setting's declaration says besides its default."""

    help: str
    choices: Optional[Choices] = None
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    rule: Optional[Rule] = None

    def names(self) -> Optional[list[str]]:
        """The choices as a list (a registry's names are read now), or None."""
        if self.choices is None:
            return None
        return list(self.choices() if callable(self.choices) else self.choices)

    def range_text(self) -> str:
        """"in [0, 1]", ">= 1e-3", "in [1, 65536]" ("" when unbounded): completes "must be ..."."""
        low = (f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None)
        high = (f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        if high:
            return ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return ""


def _num(v: float) -> str:
    """A bound as a message writes it: 4294967296, 0.001, 100."""
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def setting(default: Any, help: str, *, choices: Optional[Choices] = None, ge: Optional[float] = None,
            gt: Optional[float] = None, le: Optional[float] = None, lt: Optional[float] = None,
            rule: Optional[Rule] = None) -> Any:
    """A dataclass field: `default`, the `help` sentence (what the setting does), its `choices`, and its range:
    bounds `ge` (>=), `gt` (>), `le` (<=), `lt` (<) on the number (on each number of a tuple), and a `rule`
    for what bounds cannot say. None is allowed only where the type is Optional (the help says what it means)."""
    return field(default=default, metadata={_SPEC: Spec(help, choices, ge, gt, le, lt, rule)})


def spec_of(cls: type, name: str) -> Spec:
    """The declaration of field `name` of dataclass `cls`, from `cls` or the nearest base that declares it."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and _SPEC in f.metadata:
            return f.metadata[_SPEC]
    raise AssertionError(f"{cls.__name__}.{name} is not declared with setting(default, help, ...)")


_HINTS: dict[type, dict[str, Any]] = {}


def types_of(cls: type) -> dict[str, Any]:
    """field name -> its type (Optional[...] included), cached per class; class variables are not settings."""
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in fields(cls)}
    return _HINTS[cls]


def flag(name: str) -> str:
    """The flag of a setting: `batch_size` -> `--batch-size`."""
    return "--" + name.replace("_", "-")


def names_of(obj_or_cls: Any) -> list[str]:
    return [f.name for f in fields(obj_or_cls)]


# ---- values: coerce, check ---------------------------------------------------------------------------------
def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(the type inside Optional, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, name: str) -> Any:
    """A YAML or flag value converted to the type `tp`, or a ConfigError naming `name`."""
    base, optional = unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional:
            return None
        raise ConfigError(f"{name} cannot be empty")
    converted = _convert(value, base, name)
    if converted is _BAD:
        raise ConfigError(f"{name}: {shown(value)} is not a valid {type_name(tp)}")
    return converted


_BAD = object()
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _convert(value: Any, base: Any, name: str) -> Any:
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = value.lower() if isinstance(value, str) else None
            return True if text in _TRUE else False if text in _FALSE else _BAD
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                return _BAD
            return int(value)
        if base is float:
            return _BAD if isinstance(value, bool) else float(value)
        if base is str:
            return str(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else _BAD
        if typing.get_origin(base) is tuple:
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not items:
                return _BAD
            args = typing.get_args(base)
            if len(args) == 2 and args[1] is Ellipsis:  # tuple[float, ...]: any length, at least one
                args = (args[0],) * len(items)
            if len(items) != len(args):
                return _BAD
            return tuple(coerce(v, a, name) for v, a in zip(items, args))
    except (ValueError, TypeError, OverflowError):
        return _BAD
    raise AssertionError(f"unsupported setting type {base} for {name}")


def type_name(tp: Any) -> str:
    base, optional = unwrap_optional(tp)
    if typing.get_origin(base) is tuple:
        name = "comma-separated list of " + ", ".join(a.__name__ for a in typing.get_args(base) if a is not Ellipsis)
    else:
        name = base.__name__
    return name + (" (or none)" if optional else "")


def problem(value: Any, tp: Any, spec: Spec) -> Optional[str]:
    """What is wrong with `value` for a setting of type `tp` declared by `spec` (completes "must be ..."), or None."""
    base, optional = unwrap_optional(tp)
    if value is None:
        return None if optional else "given"
    names = spec.names()
    if names is not None and value not in names:
        return f"one of {one_of(names)}"
    numbers = value if isinstance(value, tuple) else (value,)
    for v in numbers:
        if isinstance(v, float) and not math.isfinite(v):
            return "a finite number" + (f" {spec.range_text()}" if spec.range_text() else "")
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not _within(v, spec):
            return ("each number " if isinstance(value, tuple) else "") + spec.range_text()
    if spec.rule is not None and not spec.rule.holds(value):
        return spec.rule.text
    return None


def _within(v: float, s: Spec) -> bool:
    return ((s.ge is None or v >= s.ge) and (s.gt is None or v > s.gt) and (s.le is None or v <= s.le)
            and (s.lt is None or v < s.lt))


def check(obj: Any, skip: Sequence[str] = ()) -> None:
    """Every setting of dataclass instance `obj` within its declared range; the first that is not raises a
    ConfigError naming its flag, its value and the range."""
    cls, hints = type(obj), types_of(type(obj))
    for f in fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        wrong = problem(value, hints[f.name], spec_of(cls, f.name))
        if wrong is not None:
            raise ConfigError(f"{flag(f.name)} {shown(value)}: must be {wrong}")


def shown(value: Any) -> str:
    """A value as a message shows it: on one line, short, strings quoted (a newline stays `\\n`)."""
    if isinstance(value, tuple):
        return ",".join(shown(v) for v in value)
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def one_of(choices: Sequence[str]) -> str:
    """"a, b or c": the choices of an option, for messages and help texts."""
    choices = list(choices) or ["(none)"]
    return choices[0] if len(choices) == 1 else ", ".join(choices[:-1]) + " or " + choices[-1]


# ---- dict / YAML --------------------------------------------------------------------------------------------
def to_dict(obj: Any) -> dict[str, Any]:
    """field -> value, tuples as lists (YAML)."""
    return {f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v for f in fields(obj)}


def update(obj: Any, values: dict[str, Any], where: str) -> None:
    """Set fields of `obj` from `values`, converted to their types; an unknown key is a ConfigError."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of setting: value, got {type(values).__name__}")
    hints = types_of(type(obj))
    for key, value in values.items():
        if key not in hints or key not in names_of(obj):
            raise ConfigError(f"{where}: unknown setting {shown(key)}; known: {', '.join(names_of(obj))}")
        setattr(obj, key, coerce(value, hints[key], f"{where}: {key}"))


def from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    obj = cls()
    update(obj, values, where)
    return obj


def read_yaml_file(path: str | Path) -> Any:
    """The contents of a YAML config file ({} when empty); ConfigError when missing or malformed."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass an existing YAML file to --config") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder; pass a YAML file") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror or e}); pass a readable YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text (not UTF-8); pass a YAML file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML ({str(e).splitlines()[0]}); fix the file") from None
    except RecursionError:  # YAML nested thousands of levels deep
        raise ConfigError(f"config file {path} is nested too deeply to be a config; fix the file") from None


def dump_yaml(data: dict[str, Any]) -> bytes:
    return yaml.safe_dump(data, sort_keys=False).encode()


# ---- flags --------------------------------------------------------------------------------------------------
def help_text(cls: type, name: str, default: str | None = None, extra: str = "") -> str:
    """The help of a flag: the declared sentence, its choices, its range, `extra`, and its default."""
    spec, tp = spec_of(cls, name), types_of(cls)[name]
    parts = [spec.help]
    names = spec.names()
    if names is not None:
        parts.append(f"choices: {', '.join(names)}")
    base = unwrap_optional(tp)[0]
    if spec.range_text():
        parts.append(("each " if typing.get_origin(base) is tuple else "") + spec.range_text())
    if spec.rule is not None:  # a rule on words names the accepted ones
        parts.append(f"{'choices' if base is str else 'must be'}: {spec.rule.text}")
    if extra:
        parts.append(extra)
    if default is None:
        value = getattr(cls(), name) if _has_plain_default(cls, name) else None
        default = ",".join(map(str, value)) if isinstance(value, tuple) else str(value).lower() \
            if isinstance(value, bool) or value is None else str(value)
    parts.append(f"default: {default}")
    return sentence("; ".join(parts)).replace("%", "%%")


def sentence(text: str) -> str:
    """`text` as a sentence: a capital first letter (unless the first word is a symbol such as `w` or `z_std`) and
    a full stop."""
    first = text.split(" ", 1)[0].rstrip(",:;")
    if first.replace("-", "").isalpha() and first.islower() and (len(first) > 1 or first == "a"):
        text = text[0].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


def _has_plain_default(cls: type, name: str) -> bool:
    return cls.__dataclass_fields__[name].default is not dataclasses.MISSING


def add_flags(group: Any, cls: type, names: Optional[Sequence[str]] = None,
              defaults: Optional[dict[str, str]] = None, extra: Optional[dict[str, str]] = None,
              aliases: Optional[dict[str, list[str]]] = None) -> None:
    """One flag per setting of dataclass `cls` (or of those in `names`): `--batch-size N`, `--download` /
    `--no-download`, with its help text; `defaults` / `extra`: words for the help in place of the class default /
    after the range; `aliases`: more option strings (`-n`). A flag not given leaves nothing in the parsed
    namespace (see `given_flags`)."""
    hints = types_of(cls)
    for name in names if names is not None else names_of(cls):
        text = help_text(cls, name, (defaults or {}).get(name), (extra or {}).get(name, ""))
        strings = [flag(name), *(aliases or {}).get(name, [])]
        base, _ = unwrap_optional(hints[name])
        if base is bool:
            group.add_argument(*strings, dest=name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=text)
            continue
        choices = spec_of(cls, name).names()
        metavar = "{" + ",".join(choices) + "}" if choices is not None else name.upper()
        group.add_argument(*strings, dest=name, default=argparse.SUPPRESS, help=text,
                           metavar=metavar if len(metavar) <= 48 else name.upper())


def given_flags(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The settings among `names` whose flags were given (their raw values)."""
    return {name: value for name, value in vars(args).items() if name in names}


__all__ = ["Rule", "Spec", "setting", "spec_of", "types_of", "flag", "names_of", "coerce", "check", "problem",
           "shown", "one_of", "to_dict", "update", "from_dict", "read_yaml_file", "dump_yaml", "help_text",
           "add_flags", "given_flags", "type_name", "unwrap_optional"]
