"""What an option is: its record (`Option`: name, kind, default, help, whether checkpoints store
it) and its kinds (integer range, number range, choice, flag, text, ...). A kind knows both its
click type and its check, so that the command line and a checkpoint's or an arguments file's
values pass the same test. The declarations themselves are in `train.cli.schema`.

Imports click and the standard library only: every command's `--help` builds from here without
loading torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import click



def shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Bad(ValueError):
    """A value's whole problem, one line (`'x' is not one of a, b`); the caller says where it came from."""


class Kind:
    """A kind of value. `problem(v)` is None for a good value, else the whole one-line problem;
    `read(v)` is the value an option keeps (the value itself unless the kind reads something from
    it: `--input`'s bands) or raises `_Bad`; `click_type()` is the command line's type."""

    wanted = "a value"

    def ok(self, v: Any) -> bool:
        raise NotImplementedError

    def problem(self, v: Any) -> str | None:
        return None if self.ok(v) else f"{shown(v)} is not {self.wanted}"

    def read(self, v: Any) -> Any:
        problem = self.problem(v)
        if problem is not None:
            raise _Bad(problem)
        return v

    def click_type(self) -> Any:
        return None


@dataclass(frozen=True)
class Int(Kind):
    lo: int
    hi: int
    click_max: bool = True  # False: click takes any value >= lo and the check names the bound

    @property
    def wanted(self) -> str:  # type: ignore[override]
        return f"an integer in {self.lo}..{self.hi}"

    def ok(self, v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and self.lo <= v <= self.hi

    def click_type(self) -> Any:
        return click.IntRange(self.lo, self.hi if self.click_max else None)


@dataclass(frozen=True)
class Real(Kind):
    lo: float
    hi: float = math.inf
    low_open: bool = False

    @property
    def wanted(self) -> str:  # type: ignore[override]
        bound = f"> {self.lo}" if self.low_open else f">= {self.lo}"
        return f"a finite number {bound}" + (f" and <= {self.hi}" if math.isfinite(self.hi) else "")

    def ok(self, v: Any) -> bool:
        return (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and (self.lo < v if self.low_open else self.lo <= v) and v <= self.hi)

    def click_type(self) -> Any:
        def word(x: float) -> float:  # --help shows [0<=x<=1], as it always has, not [0.0<=x<=1.0]
            return int(x) if float(x).is_integer() else x
        hi = word(self.hi) if math.isfinite(self.hi) else None
        return click.FloatRange(word(self.lo), hi, min_open=self.low_open)


@dataclass(frozen=True)
class Choice(Kind):
    choices: tuple[str, ...]

    @property
    def wanted(self) -> str:  # type: ignore[override]
        return "one of " + ", ".join(self.choices)

    def ok(self, v: Any) -> bool:
        return isinstance(v, str) and v in self.choices

    def click_type(self) -> Any:
        return click.Choice(list(self.choices))


@dataclass(frozen=True)
class IntChoice(Kind):
    """A few integers, given on the command line as words (`--output-stride 8`)."""

    choices: tuple[int, ...]

    @property
    def wanted(self) -> str:  # type: ignore[override]
        return " or ".join(str(c) for c in self.choices)

    def ok(self, v: Any) -> bool:
        return v in self.choices and not isinstance(v, bool)

    def click_type(self) -> Any:
        return click.Choice([str(c) for c in self.choices])


@dataclass(frozen=True)
class Flag(Kind):
    wanted = "True or False"

    def ok(self, v: Any) -> bool:
        return isinstance(v, bool)


@dataclass(frozen=True)
class Text(Kind):
    """A path or URL: one line, not empty, at most 4096 characters."""

    wanted = "a path or URL"

    def ok(self, v: Any) -> bool:
        return isinstance(v, str) and bool(v) and "\n" not in v and len(v) <= 4096


@dataclass(frozen=True)
class Optional(Kind):
    """None (the option's 'not given'), or a value of `kind`."""

    kind: Kind

    def problem(self, v: Any) -> str | None:
        return None if v is None else self.kind.problem(v)

    def read(self, v: Any) -> Any:
        return None if v is None else self.kind.read(v)

    def click_type(self) -> Any:
        return self.kind.click_type()


@dataclass(frozen=True)
class Custom(Kind):
    """A kind whose check needs more than a range: `check(v)` gives the whole problem or None, or
    `reader(v)` gives the value kept (raising `_Bad`); `clicked` the command line's type (None:
    text). A check may import what it needs when it runs (the model registry, say), so that
    `--help` does not."""

    check: Callable[[Any], str | None] | None = None
    clicked: Callable[[], Any] | None = None
    reader: Callable[[Any], Any] | None = None

    def problem(self, v: Any) -> str | None:
        if self.reader is None:
            return self.check(v) if self.check is not None else None
        try:
            self.reader(v)
        except _Bad as exc:
            return str(exc)
        return None

    def read(self, v: Any) -> Any:
        return self.reader(v) if self.reader is not None else super().read(v)

    def click_type(self) -> Any:
        return self.clicked() if self.clicked is not None else None


_SAME = object()  # Option.cli_default: the config's default


@dataclass(frozen=True)
class Option:
    """One option: the config field `name`, its `kind`, `default` and `help`, and how the command
    line spells it. `stored`: a checkpoint's configuration may set it on --resume. `in_config`:
    a field of the run's configuration (False: the command's own, such as evaluate's --out)."""

    name: str
    kind: Kind
    default: Any
    help: str
    decls: tuple[str, ...] = ()     # click spellings; default ("--name-with-dashes",)
    metavar: str | None = None
    show_default: bool = True
    cli_default: Any = _SAME        # what click starts from, where it differs from the config's default
    required: bool = False
    is_flag: bool = False
    callback: Callable[[Any, Any, Any], Any] | None = None
    stored: bool = True
    in_config: bool = True
    loader: bool = False            # a LoaderSpec field of the same name (train.run.setup.loader_spec)
    field_type: str = ""            # the config field's annotation (the default's type when empty)

    @property
    def flag(self) -> str:
        """The command line's spelling, as error messages name it (`--batch-size`, `--no-verify`)."""
        spelled = [d for d in self.decls if d.startswith("--")] or ["--" + self.name.replace("_", "-")]
        first = spelled[0]
        return "--" + first.split("/--")[1] if "/--" in first else first

    @property
    def command_default(self) -> Any:
        """The default click starts from."""
        return self.default if self.cli_default is _SAME else self.cli_default

    def but(self, **changes: Any) -> "Option":
        """This option as another command declares it (another default or help text)."""
        return replace(self, **changes)

    def click_option(self) -> Callable[[Callable], Callable]:
        decls = self.decls or ("--" + self.name.replace("_", "-"),)
        if len(decls) == 1 and decls[0].lstrip("-").replace("-", "_") != self.name:
            decls = (*decls, self.name)
        kwargs: dict[str, Any] = {"help": self.help, "default": self.command_default}
        if self.is_flag:
            kwargs["is_flag"] = True
        else:
            kwargs["type"] = self.kind.click_type()
            kwargs["show_default"] = self.show_default
        for key in ("metavar", "callback"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        if self.required:
            kwargs["required"] = True
        return click.option(*decls, **kwargs)


def click_options(options: Sequence[Option]) -> Callable[[Callable], Callable]:
    """A decorator giving a click command `options`, in this order in --help."""
    def apply(command: Callable) -> Callable:
        for option in reversed(options):
            command = option.click_option()(command)
        return command
    return apply


__all__ = ["Kind", "Int", "Real", "Choice", "IntChoice", "Flag", "Text", "Optional", "Custom",
           "Option", "click_options", "shown"]
