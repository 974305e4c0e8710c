"""Every public symbol of keras_inception is documented the Google way, with an example.

Walks every module of the package (new modules are covered without editing this
file) and checks each name of its ``__all__``: a docstring whose first line is a
summary, an ``Args:`` section that names every parameter, a ``Returns:`` (or
``Yields:``) section when a function returns a value, ``Attributes:`` naming
every field of a dataclass, and a ``>>>`` example (run by ``--doctest-modules``).
Each test lists every offender at once.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import re
import textwrap

import pytest

import keras_inception

SECTION = re.compile(r"^(\w[\w ]*):\s*$")


def _module_names():
    names = ["keras_inception"]
    names += [m.name for m in pkgutil.walk_packages(keras_inception.__path__,
                                                     prefix="keras_inception.")]
    return sorted(names)


MODULES = _module_names()


def _public_symbols():
    """``(module_name, name, object)`` for every name of every module's ``__all__``."""
    out = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            out.append((module_name, name, getattr(module, name, None)))
    return out


def _sections(doc: str) -> dict:
    """``{section title: indented body text}`` of a Google-style docstring."""
    sections, current = {}, None
    for line in doc.splitlines():
        match = SECTION.match(line)
        if match and not line.startswith(" "):
            current = match.group(1)
            sections[current] = []
        elif current is not None:
            if line and not line.startswith(" "):
                current = None  # back to prose
            else:
                sections[current].append(line)
    return {k: textwrap.dedent("\n".join(v)) for k, v in sections.items()}


def _entries(body: str) -> set:
    """Names documented in an Args:/Attributes: body (``name: ...``, ``name (type): ...``)."""
    names = set()
    for line in body.splitlines():
        if line and not line.startswith(" "):
            match = re.match(r"^(\*{0,2}\w+)\s*(\([^)]*\))?\s*:", line)
            if match:
                names.add(match.group(1).lstrip("*"))
    return names


def _documented_parameters(signature: inspect.Signature) -> list:
    """Parameters an Args: section must name: all but self/cls and bare *args/**kwargs."""
    return [p.name for p in signature.parameters.values()
            if p.name not in ("self", "cls")
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _function_node(func):
    """The ``ast`` node of ``func``'s definition, or None when its source is not found."""
    func = inspect.unwrap(func)
    try:
        source = textwrap.dedent(inspect.getsource(func))
    except (OSError, TypeError):
        return None
    node = ast.parse(source).body[0]
    return node if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def _own_nodes(node):
    """The nodes of a function body, without those of nested functions and classes."""
    stack = list(node.body)
    while stack:
        child = stack.pop()
        yield child
        for sub in ast.iter_child_nodes(child):
            if not isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                    ast.ClassDef)):
                stack.append(sub)


def _result_kind(func):
    """``"Yields"``, ``"Returns"`` or None: what a function's docstring must describe."""
    node = _function_node(func)
    if node is None:
        return None
    own = list(_own_nodes(node))
    if any(isinstance(n, (ast.Yield, ast.YieldFrom)) for n in own):
        return "Yields"
    annotation = node.returns
    if annotation is not None:
        text = ast.unparse(annotation).strip("'\"")
        if text in ("None", "NoReturn", "typing.NoReturn"):
            return None
        return "Returns"
    returns_value = any(isinstance(n, ast.Return) and n.value is not None
                        and not (isinstance(n.value, ast.Constant)
                                 and n.value.value is None)
                        for n in own)
    return "Returns" if returns_value else None


def _problems(qualname: str, obj) -> list:
    if obj is None:
        return [f"{qualname}: listed in __all__ but not defined"]
    if inspect.ismodule(obj):
        doc = inspect.getdoc(obj)
        return [] if doc and doc.splitlines()[0].strip() else [
            f"{qualname}: module without a docstring"]
    if not (inspect.isclass(obj) or callable(obj)):
        return [f"{qualname}: data ({type(obj).__name__}) in __all__: only functions, "
                f"classes and modules can carry a docstring and a runnable example"]
    doc = inspect.getdoc(obj)
    if not doc:
        return [f"{qualname}: no docstring"]
    problems = []
    lines = doc.splitlines()
    if not lines[0].strip() or (len(lines) > 1 and lines[1].strip()):
        problems.append(f"{qualname}: the first line must be a one-line summary "
                        f"followed by a blank line")
    sections = _sections(doc)
    if ">>>" not in doc:
        problems.append(f"{qualname}: no >>> example")
    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj):
            fields = {f.name for f in dataclasses.fields(obj)}
            missing = fields - _entries(sections.get("Attributes", ""))
            if missing:
                problems.append(f"{qualname}: Attributes: section misses "
                                f"{sorted(missing)}")
            return problems
        init = obj.__dict__.get("__init__")
        if init is None or issubclass(obj, BaseException):
            return problems
        params = _documented_parameters(inspect.signature(init))
        init_doc = inspect.getdoc(init) or ""
        documented = _entries(sections.get("Args", "")) | _entries(
            _sections(init_doc).get("Args", ""))
        missing = [p for p in params if p not in documented]
        if missing:
            problems.append(f"{qualname}: Args: section misses {missing}")
        return problems
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        missing = [p for p in _documented_parameters(signature)
                   if p not in _entries(sections.get("Args", ""))]
        if missing:
            problems.append(f"{qualname}: Args: section misses {missing}")
    kind = _result_kind(obj)
    if kind and kind not in sections:
        problems.append(f"{qualname}: no {kind}: section")
    return problems


def test_every_module_has_an_all():
    missing = [m for m in MODULES
               if not isinstance(getattr(importlib.import_module(m), "__all__", None),
                                 (list, tuple))]
    assert not missing, f"modules without a list __all__: {missing}"


def test_every_public_symbol_is_documented():
    problems = []
    for module_name, name, obj in _public_symbols():
        problems += _problems(f"{module_name}.{name}", obj)
    assert not problems, "\n".join([f"{len(problems)} docstring problems:"] + problems)


def test_package_root_reexports_are_in_all():
    """What ``keras_inception`` imports for its users is what its ``__all__`` lists."""
    public = {name for name, obj in vars(keras_inception).items()
              if not name.startswith("_")
              and (inspect.isclass(obj) or inspect.isfunction(obj))}
    missing = sorted(public - set(keras_inception.__all__))
    assert not missing, f"keras_inception re-exports missing from __all__: {missing}"


# The checker itself must catch what it is for, and let good docstrings through.

def _good(x, *, y=1):
    """Adds.

    Args:
        x: a number.
        y: another.

    Returns:
        The sum.

    Example:
        >>> _good(1)
        2
    """
    return x + y


def _no_returns(x):
    """Adds one.

    Args:
        x: a number.

    Example:
        >>> _no_returns(1)
        2
    """
    return x + 1


def _missing_arg(x, y):
    """Prints two things.

    Args:
        x: one.

    Example:
        >>> _missing_arg(1, 2)
        1 2
    """
    print(x, y)


def _generator(n):
    """Counts.

    Args:
        n: how far.

    Returns:
        Wrong section for a generator.

    Example:
        >>> list(_generator(2))
        [0, 1]
    """
    yield from range(n)


def _two_line_summary():
    """A summary that runs
    over two lines.

    Example:
        >>> _two_line_summary()
    """


@dataclasses.dataclass
class _Data:
    """A record.

    Attributes:
        a: documented.

    Example:
        >>> _Data(1, 2).b
        2
    """

    a: int
    b: int


class _Cls:
    """A class without an example.

    Args:
        a: documented.
    """

    def __init__(self, a, b, *args, **kwargs):
        self.a = a


@pytest.mark.parametrize("obj, expected", [
    (_good, []),
    (_no_returns, ["no Returns: section"]),
    (_missing_arg, ["Args: section misses ['y']"]),
    (_generator, ["no Yields: section"]),
    (_two_line_summary, ["one-line summary"]),
    (_Data, ["Attributes: section misses ['b']"]),
    (_Cls, ["no >>> example", "Args: section misses ['b']"]),
    (42, ["data (int) in __all__"]),
])
def test_checker_finds_real_omissions_only(obj, expected):
    problems = _problems("x", obj)
    assert len(problems) == len(expected), problems
    for problem, text in zip(problems, expected):
        assert text in problem, problems
