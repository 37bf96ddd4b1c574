"""Names of a package that load their module on first use (PEP 562), so that importing the
package stays cheap: reading a recipe must not pull in torch-pruning, timm and torchvision."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    package: str,
    names: Mapping[str, str],
    namespace: dict[str, Any],
    first: str | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: each of ``names`` (name -> module) is
    imported from its module when first asked for and then kept in ``namespace`` (the package's
    globals). ``first``, a module imported before any of them (one that registers plugins)."""

    def getattr_(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if first is not None:
            importlib.import_module(first)
        value = getattr(importlib.import_module(names[name]), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(names))

    return getattr_, dir_
