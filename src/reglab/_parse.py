"""Safe parsing of call expressions such as ``l2(1e-3)`` or ``Dense(500, activation='relu')``.

Text is read with :func:`ast.parse` and only literals, names and calls are accepted: nothing is
evaluated, imported or looked up, so a line like ``__import__('os')`` is just an unknown name.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Call:
    """A parsed call: ``name(*args, **kwargs)`` with literal (or nested Call) arguments."""

    name: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


class ParseError(ValueError):
    """Text that is not a literal call expression."""


MAX_LENGTH = 10_000   # characters; a layer or penalty line is far shorter


def parse_call(text: str, what: str = "expression") -> Call:
    """Parse ``text`` into a :class:`Call`; a bare name becomes a call without arguments.

    >>> parse_call("l1_l2(l1=1e-5, l2=1e-4)")
    Call(name='l1_l2', args=(), kwargs={'l1': 1e-05, 'l2': 0.0001})
    >>> parse_call("keras.regularizers.l2(0.01)").name
    'l2'
    """
    if not isinstance(text, str):
        raise TypeError(f"The {what} must be a string. Got {text!r} of type {type(text).__name__} instead.")
    if len(text) > MAX_LENGTH:
        raise ParseError(f"The {what} {_clip(text)} is {len(text)} characters long; "
                         f"write it in at most {MAX_LENGTH}.")
    try:
        tree = ast.parse(text.strip(), mode="eval")
        value = _literal(tree.body, text, what)
    except SyntaxError as exc:
        raise ParseError(f"Cannot parse {what} {text!r}: {exc.msg}.") from None
    except (RecursionError, MemoryError):
        raise ParseError(f"Cannot parse {what} {_clip(text)}: it is nested too deeply.") from None
    if isinstance(value, Call):
        return value
    raise ParseError(f"The {what} {text!r} must be a name or a call such as 'l2(0.001)'.")


def _name_of(node, text, what) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute)):
        _name_of(node.value, text, what)  # dotted module path: keep only the last part
        return node.attr
    raise ParseError(f"Cannot parse {what} {text!r}: only plain names may be called.")


def _literal(node, text, what):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str, bool, type(None))):
        if isinstance(node.value, int) and not isinstance(node.value, bool) and abs(node.value) > 2**63 - 1:
            raise ParseError(f"Cannot parse {what} {_clip(text)}: the number {_short(node.value)} is too large.")
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _literal(node.operand, text, what)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_literal(e, text, what) for e in node.elts)
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = _name_of(node, text, what)
        if name in ("inf", "nan"):
            return float(name)
        return Call(name)
    if isinstance(node, ast.Call):
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise ParseError(f"Cannot parse {what} {text!r}: *args and **kwargs are not allowed.")
        return Call(
            _name_of(node.func, text, what),
            tuple(_literal(a, text, what) for a in node.args),
            {k.arg: _literal(k.value, text, what) for k in node.keywords},
        )
    snippet = ast.get_source_segment(text.strip(), node) or type(node).__name__
    raise ParseError(f"Cannot parse {what} {text!r}: {snippet!r} is not a number, string, name or call.")


def _short(number: int) -> str:
    digits = str(abs(number))   # < 4300 digits: ast refuses longer literals
    return ("-" if number < 0 else "") + (digits if len(digits) <= 20 else f"{digits[:6]}...({len(digits)} digits)")


def _clip(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:40]) + f"... ({len(text)} characters)"


def resolve(identifier, *, base: type, noun: str, from_call, lookup, wrap, example: str):
    """Keras's ``get()`` for penalties and constraints alike: None stays None, an instance of ``base``
    is itself, a class means its defaults, text is parsed (``"l2(1e-3)"``), a dict is a Keras config
    (``class_name`` + ``config``), any other callable is wrapped; anything else is refused naming
    ``example``."""
    if identifier is None or isinstance(identifier, base):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, base):
        return identifier()  # a class such as reglab.L2 means its defaults, as in Keras's get()
    if isinstance(identifier, str):
        return from_call(parse_call(identifier, noun), identifier)
    if isinstance(identifier, dict):
        if "class_name" not in identifier:
            raise ValueError(f"A {noun} config needs 'class_name' and 'config' keys. Got {identifier!r} instead.")
        return lookup(identifier["class_name"], identifier).from_config(identifier.get("config", {}))
    if callable(identifier):
        return wrap(identifier)
    raise TypeError(f"Cannot make a {noun} from {identifier!r}; use e.g. {example}.")
