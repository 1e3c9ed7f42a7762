"""The error hierarchy is the tree drawn in ``pgq.core.errors``' docstring: the test reads the
drawing, so the documentation and the classes cannot drift apart."""

from __future__ import annotations

import inspect

import pytest

from pgq.core import errors

BRANCH = "── "
INDENT = 4


def documented_tree() -> dict[str, str | None]:
    """``{class name: parent name}`` parsed from the box drawing in the module docstring."""
    assert errors.__doc__ is not None
    lines = errors.__doc__.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "PgqError")
    base = len(lines[start]) - len(lines[start].lstrip())
    parents: dict[str, str | None] = {"PgqError": None}
    path = ["PgqError"]  # path[d] is the latest class drawn at depth d
    for line in lines[start + 1:]:
        if BRANCH not in line:
            break
        offset = line.index(BRANCH) + len(BRANCH)
        assert (offset - base) % INDENT == 0, f"misaligned tree line: {line!r}"
        depth = (offset - base) // INDENT
        assert 1 <= depth <= len(path), f"tree line skips a level: {line!r}"
        assert set(line[base:offset - len(BRANCH) - 1]) <= {" ", "│"}, f"stray characters: {line!r}"
        assert line[offset - len(BRANCH) - 1] in "├└", f"branch without a corner: {line!r}"
        name = line[offset:].split()[0]
        assert name not in parents, f"{name} drawn twice"
        parents[name] = path[depth - 1]
        del path[depth:]
        path.append(name)
    return parents


TREE = documented_tree()


def test_the_drawing_was_read() -> None:
    assert len(TREE) >= 10
    assert TREE["DatabaseUnavailable"] == "DatabaseError"
    assert TREE["PayloadTooLargeError"] == "InvalidArgsError"
    assert TREE["InvalidOptionError"] == "InvalidJobError"


@pytest.mark.parametrize(("child", "parent"), [(c, p) for c, p in TREE.items() if p is not None])
def test_each_edge_is_a_direct_subclass(child: str, parent: str) -> None:
    child_cls, parent_cls = getattr(errors, child), getattr(errors, parent)
    assert issubclass(child_cls, parent_cls)
    # besides its drawn parent, a class may also be a builtin kind of error (ResultTimeout
    # is a TimeoutError, JobNotFound a LookupError), so `except TimeoutError` catches it
    assert child_cls.__bases__[0] is parent_cls
    assert all(base.__module__ == "builtins" for base in child_cls.__bases__[1:])


def test_root_is_an_exception() -> None:
    assert errors.PgqError.__bases__ == (Exception,)


def test_every_error_class_is_drawn_and_every_drawn_class_exists() -> None:
    defined = {name for name, obj in inspect.getmembers(errors, inspect.isclass)
               if issubclass(obj, Exception) and obj.__module__ == errors.__name__}
    assert defined == set(TREE)


def test_corners_close_each_level() -> None:
    """The last child of a class is drawn with └, the others with ├."""
    children: dict[str, list[str]] = {}
    for child, parent in TREE.items():
        if parent is not None:
            children.setdefault(parent, []).append(child)
    assert errors.__doc__ is not None
    corner = {line.split(BRANCH)[1].split()[0]: line.split(BRANCH)[0][-1]
              for line in errors.__doc__.splitlines() if BRANCH in line}
    for kids in children.values():
        assert [corner[k] for k in kids] == ["├"] * (len(kids) - 1) + ["└"]
