"""Dataclass fidelity: what plain `dataclasses` (and Equinox) do, treeclasses do too.

`super().__init__()` from a subclass's own `__init__`, `__post_init__` on undecorated
subclasses, `InitVar` order, annotations on the generated `__init__`, a field named
`self`, and a `repr` that never hides fields. Each is compared with the dataclass that
the same class body makes, where there is one.

The module uses `from __future__ import annotations`, so every annotation here is a
string: the generated `__init__` must resolve them as dataclasses' does.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import textwrap
import types
import typing
from dataclasses import InitVar
from typing import ClassVar, Generic, TypeVar

import jax
import jax.numpy as jnp
import pytest

import pytreeclass as ptc
from pytreeclass import field, treeclass

T = TypeVar("T")


# -- 1. super().__init__() first, then the subclass's own fields --------------------------------


def _parent_and_child(spelling: str, log: list[str]) -> tuple[type, type]:
    """A parent with a __post_init__ and a child whose __init__ calls super() first."""

    def post_init(self: typing.Any) -> None:
        log.append(f"post_init extra={'extra' in self.__dict__}")
        self.double = 2 * self.a

    body = {
        "__annotations__": {"a": "int", "double": "int"},
        "double": field(init=False),
        "__post_init__": post_init,
    }
    if spelling == "decorator":
        Parent = treeclass(type("Parent", (), body))
    else:
        Parent = type("Parent", (ptc.TreeClass,), body)

    def child_init(self: typing.Any, a: int, extra: int) -> None:
        log.append("child before super")
        super(Child, self).__init__(a)
        log.append("child after super")
        self.extra = extra

    child_body = {"__annotations__": {"extra": "int"}, "__init__": child_init}
    Child = type("Child", (Parent,), child_body)
    if spelling == "decorator":
        Child = treeclass(Child)
    return Parent, Child


@pytest.mark.parametrize("spelling", ["decorator", "TreeClass"])
def test_super_init_first_then_own_fields_with_an_ancestor_post_init(spelling):
    log: list[str] = []
    _, Child = _parent_and_child(spelling, log)
    c = Child(3, 7)
    assert (c.a, c.double, c.extra) == (3, 6, 7)
    # Dataclasses' order: the parent's generated __init__ runs __post_init__ before it
    # returns, so the child's own fields are not set yet when it runs.
    assert log == ["child before super", "post_init extra=False", "child after super"]
    # Frozen once the outermost __init__ returned, and the stored flatten result is the
    # final one (a seal inside super().__init__ would have missed `extra`).
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.extra = 1
    assert sorted(jax.tree.leaves(c)) == [3, 6, 7]
    assert jax.tree.unflatten(jax.tree.structure(c), jax.tree.leaves(c)) == c


def test_the_same_order_as_plain_dataclasses():
    def run(decorate: typing.Any) -> list[str]:
        log: list[str] = []

        @decorate
        class Parent:
            a: int

            def __post_init__(self) -> None:
                log.append(f"post_init sees extra: {hasattr(self, 'extra')}")

        @decorate
        class Child(Parent):
            extra: int

            def __init__(self, a: int, extra: int) -> None:
                super().__init__(a)
                log.append("after super")
                self.extra = extra

        Child(1, 2)
        return log

    assert run(treeclass) == run(dataclasses.dataclass)


def test_undecorated_subclass_init_sets_a_parent_field_after_super_init():
    seen: list[bool] = []

    @treeclass
    class Parent:
        a: int
        b: int = field(init=False)  # no default: whoever builds it must set it

        def __post_init__(self) -> None:
            seen.append("b" in self.__dict__)

    class Child(Parent):  # undecorated: no new fields, its own __init__
        def __init__(self, a: int) -> None:
            super().__init__(a)
            self.b = a * 10

    c = Child(2)
    assert (c.a, c.b) == (2, 20) and seen == [False]
    with pytest.raises(TypeError, match=r"Parent.__init__ returned without setting field\(s\) 'b'"):
        Parent(1)


def test_missing_field_is_still_reported_after_the_outermost_init():
    @treeclass
    class Parent:
        a: int

        def __post_init__(self) -> None:
            pass

    @treeclass
    class Child(Parent):
        extra: int

        def __init__(self, a: int) -> None:
            super().__init__(a)  # and forgets `extra`

    with pytest.raises(
        TypeError, match=r"Child.__init__ returned without setting field\(s\) 'extra'"
    ):
        Child(1)


def test_parent_init_false_field_without_default_set_by_the_child():
    @treeclass
    class Parent:
        a: int
        n: int = field(init=False)  # no default, no __post_init__: the child sets it

    @treeclass
    class Child(Parent):
        def __init__(self, a: int) -> None:
            super().__init__(a)
            self.n = a + 1

    assert Child(1).n == 2
    with pytest.raises(TypeError, match=r"Parent.__init__ returned without setting field\(s\) 'n'"):
        Parent(1)


def test_converters_run_once_per_assignment_through_super_init():
    calls: list[object] = []

    def conv(x: typing.Any) -> typing.Any:
        calls.append(x)
        return jnp.asarray(x)

    @treeclass
    class Parent:
        a: jax.Array = field(converter=conv)

        def __post_init__(self) -> None:
            assert isinstance(self.a, jax.Array)  # converted before __post_init__ runs

    @treeclass
    class Child(Parent):
        b: jax.Array = field(converter=conv)

        def __init__(self, a: float, b: float) -> None:
            super().__init__(a)
            self.b = b

    c = Child(1.0, 2.0)
    assert calls == [1.0, 2.0]
    assert isinstance(c.b, jax.Array)


def test_super_init_under_jit_and_vmap():
    _, Child = _parent_and_child("decorator", [])
    out = jax.jit(lambda a: Child(a, a + 1))(jnp.int32(2))
    assert (int(out.double), int(out.extra)) == (4, 3)
    batched = jax.vmap(lambda a: Child(a, a))(jnp.arange(3))
    assert batched.double.tolist() == [0, 2, 4]


# -- 2. __post_init__ on an undecorated subclass --------------------------------------------


def test_post_init_of_an_undecorated_subclass_runs():
    @treeclass
    class Base:
        x: int

    class Checked(Base):  # not decorated: still a treeclass
        def __post_init__(self) -> None:
            if self.x < 0:
                raise ValueError("x must be >= 0")

    class Checked2(ptc.TreeClass):
        x: int

    class CheckedT(Checked2):
        def __post_init__(self) -> None:
            if self.x < 0:
                raise ValueError("x must be >= 0")

    for cls in (Checked, CheckedT):
        assert cls(1).x == 1
        with pytest.raises(ValueError, match="x must be >= 0"):
            cls(-1)


def test_undecorated_subclass_post_init_sets_fields_and_gets_initvars():
    @treeclass
    class Base:
        x: int
        y: int = field(init=False, default=0)
        scale: InitVar[int] = 1

    class Scaled(Base):
        def __post_init__(self, scale: int) -> None:
            self.y = self.x * scale

    s = Scaled(2, 5)
    assert (s.x, s.y) == (2, 10)
    assert Base(2, 5).y == 0  # the parent itself has no __post_init__
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.y = 1


def test_undecorated_subclass_overriding_a_post_init():
    seen: list[str] = []

    @treeclass
    class Base:
        x: int

        def __post_init__(self) -> None:
            seen.append("base")

    class Sub(Base):
        def __post_init__(self) -> None:
            seen.append("sub")
            super().__post_init__()

    Sub(1)
    Base(1)
    assert seen == ["sub", "base", "base"]


# -- 3. InitVar keeps its place ---------------------------------------------------------------


def test_initvar_keeps_declaration_order():
    got: list[bool] = []

    def body() -> dict[str, typing.Any]:
        def post_init(self: typing.Any, flag: bool) -> None:
            got.append(flag)

        return {
            "__annotations__": {"x": int, "flag": InitVar[bool], "y": int},
            "flag": False,
            "y": 0,
            "__post_init__": post_init,
        }

    C = treeclass(type("C", (), body()))
    D = dataclasses.dataclass(type("D", (), body()))
    c = C(1, True, 2)
    assert (c.x, c.y) == (1, 2) and got == [True]
    assert list(inspect.signature(C).parameters) == ["x", "flag", "y"]
    assert str(inspect.signature(C)) == str(inspect.signature(D))


def test_initvar_without_default_before_defaulted_fields():
    @treeclass
    class C:
        x: int
        flag: InitVar[bool]
        y: int = 0

        def __post_init__(self, flag: bool) -> None:
            if flag:
                self.y = -self.y  # reassigning a field in __post_init__ is allowed

    assert C(1, True, 2).y == -2
    assert C(1, False).y == 0


def test_initvar_without_default_after_a_default_names_the_initvar():
    with pytest.raises(TypeError, match="InitVar 'flag' has no default but follows field 'y'"):

        @treeclass
        class C:
            x: int
            y: int = 0
            flag: InitVar[bool]  # type: ignore[misc]


def test_kw_only_initvar_goes_last():
    @treeclass
    class C:
        x: int
        flag: InitVar[bool] = field(default=False, kw_only=True)
        y: int = 0

        def __post_init__(self, flag: bool) -> None:
            pass

    assert list(inspect.signature(C).parameters) == ["x", "y", "flag"]
    assert C(1, 2, flag=True).y == 2


# -- 4. annotations on the generated __init__ --------------------------------------------------


@treeclass
class Annotated(Generic[T]):
    a: int
    later: Later | None  # a forward reference, defined below
    item: T
    flag: InitVar[bool] = False
    b: float = 1.0
    count: ClassVar[int] = 0
    items: list[int] = field(default_factory=list)
    static: str = field(static=True, default="s")

    def __post_init__(self, flag: bool) -> None:
        pass


@dataclasses.dataclass
class AnnotatedDC(Generic[T]):
    a: int
    later: Later | None
    item: T
    flag: InitVar[bool] = False
    b: float = 1.0
    count: ClassVar[int] = 0
    items: list[int] = dataclasses.field(default_factory=list)
    static: str = "s"

    def __post_init__(self, flag: bool) -> None:
        pass


@treeclass
class Later:
    z: int


def test_signature_shows_annotations():
    @treeclass
    class C:
        a: int
        b: float = 1.0

    sig = inspect.signature(C)
    assert [(p.name, p.annotation, p.default) for p in sig.parameters.values()] == [
        ("a", "int", inspect.Parameter.empty),
        ("b", "float", 1.0),
    ]
    assert str(sig).startswith("(a: 'int', b: 'float' = 1.0)")


def _comparable(hints: dict[str, typing.Any]) -> dict[str, typing.Any]:
    # InitVar objects compare by identity; compare what they wrap.
    return {k: ("InitVar", v.type) if isinstance(v, InitVar) else v for k, v in hints.items()}


def test_get_type_hints_matches_dataclasses():
    if sys.version_info < (3, 11):
        # Python 3.10's get_type_hints rejects a string `InitVar[...]` annotation (3.11
        # accepts it): a treeclass fails exactly as the dataclass does.
        msg = r"Forward references must evaluate to types\. Got dataclasses\.InitVar\[bool\]"
        for cls in (Annotated, AnnotatedDC):
            with pytest.raises(TypeError, match=msg):
                typing.get_type_hints(cls.__init__)
        assert str(inspect.signature(Annotated)) == str(inspect.signature(AnnotatedDC))
        return
    hints = typing.get_type_hints(Annotated.__init__)
    assert _comparable(hints) == _comparable(typing.get_type_hints(AnnotatedDC.__init__))
    assert hints["a"] is int and hints["b"] is float and hints["item"] is T
    assert hints["later"] == (Later | None)
    assert hints["flag"].type is bool  # an InitVar[bool]
    assert hints["items"] == list[int] and hints["return"] is type(None)
    assert "count" not in hints  # ClassVar: not a parameter
    assert str(inspect.signature(Annotated)) == str(inspect.signature(AnnotatedDC))


def test_annotations_of_undecorated_and_treeclass_subclasses():
    @treeclass
    class Plain:
        a: int
        later: Later | None = None

    class Sub(Plain):  # its __post_init__ needs a new generated __init__
        def __post_init__(self) -> None:
            pass

    Sub(1)  # registers it
    assert Sub.__init__ is not Plain.__init__
    expected = {"a": int, "later": (Later | None), "return": type(None)}
    assert typing.get_type_hints(Sub.__init__) == expected

    class Base(ptc.TreeClass):
        a: int
        later: Later | None = None

    assert typing.get_type_hints(Base.__init__) == expected


def test_generated_init_does_not_use_names_the_module_shadows():
    # The generated __init__ lives in the class's module (so string annotations resolve
    # there); a module that rebinds `type` must not break the static-field check.
    module = types.ModuleType("ptc_shadowing_module")
    sys.modules[module.__name__] = module
    try:
        source = """
            import pytreeclass as ptc
            type = None
            len = None

            @ptc.treeclass
            class C:
                n: tuple = ptc.field(static=True, default=(1,))
                k: "int" = 0
        """
        exec(textwrap.dedent(source), module.__dict__)
        C = module.__dict__["C"]
        assert C(n=(2,)).n == (2,)
        with pytest.raises(TypeError, match="static field 'n' of C holds an unhashable list"):
            C(n=[2])
        assert typing.get_type_hints(C.__init__)["k"] is int
        # Nothing of the code generation is left in the module's namespace.
        assert sorted(k for k in vars(module) if "ptc" in k) == ["ptc"]
    finally:
        del sys.modules[module.__name__]


# -- 5. a field named `self` ----------------------------------------------------------------


def test_a_field_named_self():
    body = {"__annotations__": {"self": int, "other": int}, "other": 2}
    C = treeclass(type("C", (), dict(body)))
    D = dataclasses.dataclass(type("D", (), dict(body)))
    c = C(1)
    assert (c.self, c.other) == (1, 2)
    assert C(self=5, other=6).self == 5 and D(self=5, other=6).self == 5
    assert str(inspect.signature(C)) == str(inspect.signature(D))
    assert repr(c) == "C(self=1, other=2)"
    assert jax.tree.leaves(c) == [1, 2]
    assert jax.tree.map(lambda x: x * 10, c) == C(10, 20)
    assert c.at.self.set(3).self == 3 and c.at["self"].get() == 1
    assert dataclasses.replace(c, self=9).self == 9


def test_a_field_named_self_with_post_init_and_static():
    def post_init(this: typing.Any) -> None:
        this.twice = 2 * this.self

    C = treeclass(
        type(
            "C",
            (),
            {
                "__annotations__": {"self": int, "twice": int, "tag": str},
                "twice": field(init=False),
                "tag": field(static=True, default="t"),
                "__post_init__": post_init,
            },
        )
    )
    c = C(4)
    assert (c.self, c.twice, c.tag) == (4, 8, "t")
    with pytest.raises(TypeError, match="static field 'tag' of C holds an unhashable list"):
        C(1, tag=[1])  # type: ignore[call-arg]


# -- 6. repr never hides fields ---------------------------------------------------------------


def test_repr_shows_every_field_of_a_long_config():
    names = [f"p{i}" for i in range(12)]
    Config = treeclass(
        type(
            "Config", (), {"__annotations__": dict.fromkeys(names, int), **dict.fromkeys(names, 0)}
        )
    )
    text = repr(Config(*range(12)))
    assert "more)" not in text
    for i, name in enumerate(names):
        assert f"{name}={i}" in text


def test_repr_still_elides_long_lists_but_not_namedtuple_fields():
    Big = typing.NamedTuple("Big", [(f"f{i}", int) for i in range(10)])

    @treeclass
    class Holder:
        xs: list[int]
        nt: typing.Any

    text = repr(Holder(list(range(20)), Big(*range(10))))
    assert "...(13 more)" in text  # the list: 6 shown, 13 hidden, the last one
    assert "f8=8" in text and "f9=9" in text  # every namedtuple field


def test_generated_init_shows_in_tracebacks():
    import linecache
    import traceback

    def bad(x: typing.Any) -> typing.Any:
        raise ValueError("bad value")

    @treeclass
    class C:
        x: int = field(converter=bad)

    try:
        C(1)
    except ValueError as e:
        frames = traceback.extract_tb(e.__traceback__)
    generated = [f for f in frames if "generated __init__ of" in f.filename]
    assert len(generated) == 1
    assert "__ptc_conv_x(x)" in linecache.getline(generated[0].filename, generated[0].lineno)


def test_repr_keeps_every_field_of_an_equinox_module_inside():
    import equinox as eqx

    Cfg = type(
        "Cfg",
        (eqx.Module,),
        {"__annotations__": {f"h{i}": float for i in range(10)}},
    )

    @treeclass
    class Holder:
        cfg: typing.Any
        xs: dict[str, int]

    text = repr(Holder(Cfg(*map(float, range(10))), {f"k{i}": i for i in range(10)}))
    assert all(f"h{i}=" in text for i in range(10))
    assert "...(3 more)" in text  # the dict is still shortened
