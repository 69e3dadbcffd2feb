"""Heavy dependencies imported on first use, not when papertag is imported.

DuckDB and pyarrow take a third of a second to import. Every command needs them,
but ``annotate`` first starts the process that calls the model (which needs
neither), so that process's own start-up (importing openai) overlaps this one's.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    """``name`` as a module object whose first attribute access imports it (LazyLoader)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module
