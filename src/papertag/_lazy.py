"""Heavy dependencies imported on first use, not when papertag is imported.

DuckDB and pyarrow take a third of a second to import. Every command needs them,
but ``annotate`` first starts the process that calls the model (which needs
neither), so that process's own start-up (importing openai) overlaps this one's.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from types import ModuleType
from typing import Any


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


def defer_package_init(name: str) -> None:
    """Register package ``name`` so that its submodules import without its ``__init__``.

    The ``__init__`` runs only when a name it defines (and no submodule of that name)
    is first asked for. For a package whose ``__init__`` re-exports all it has, when a
    process needs a few of its modules: ``openai``'s imports every type of every API
    (four tenths of a second) for a worker that posts to one endpoint.
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ModuleNotFoundError(f"No package named {name!r}", name=name)
    loader = spec.loader
    module = importlib.util.module_from_spec(spec)
    # Worker threads may ask at once; the one that runs the __init__ may ask again inside it.
    lock = threading.RLock()
    state = "deferred"

    def __getattr__(attr: str) -> Any:
        nonlocal state
        with lock:
            if state == "done":
                # Another thread ran the __init__ while this one waited for the lock.
                if attr in module.__dict__:
                    return module.__dict__[attr]
                raise AttributeError(f"module {name!r} has no attribute {attr!r}")
            sub = f"{name}.{attr}"
            if not attr.startswith("__") and importlib.util.find_spec(sub) is not None:
                return importlib.import_module(sub)
            if state == "running":
                # Asked by the __init__ itself before defining it: as for any module
                # still initialising.
                raise AttributeError(f"partially initialized module {name!r} has no {attr!r}")
            state = "running"
            try:
                loader.exec_module(module)
            finally:
                state = "done"
                if module.__dict__.get("__getattr__") is __getattr__:
                    del module.__dict__["__getattr__"]
        return getattr(module, attr)

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[name] = module
