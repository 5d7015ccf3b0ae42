"""Griffe extension for the docs build: render `Example:` docstring sections as examples.

Google-style parsers (griffe) treat only `Examples:` as a doctest section; the singular
`Example:` becomes an admonition whose `>>>` lines render as nested block quotes. The
pytreeclass docstrings say `Example:`, so rename it here instead of in every docstring.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.M)


class SingularExamples(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _EXAMPLE.sub(
                r"\1Examples:", obj.docstring.value
            )
