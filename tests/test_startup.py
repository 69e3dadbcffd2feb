"""What the command and the LLM worker leave unloaded to start sooner, and that they
still work without it. Each check runs in a fresh interpreter: this one has loaded
everything already."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from papertag._lazy import defer_package_init

from .conftest import DIGESTS, ROOT


def _python(code: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package whose __init__ counts its runs and re-exports its submodule's name."""
    root = tmp_path / "pkgs"
    pkg = root / "deferred_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "import builtins, time\n"
        "builtins.deferred_pkg_runs = getattr(builtins, 'deferred_pkg_runs', 0) + 1\n"
        "time.sleep(0.05)  # long enough for other threads to ask meanwhile\n"
        "from .core import Thing\n"
        "VERSION = '1'\n"
    )
    (pkg / "core.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(root))
    for name in ("deferred_pkg", "deferred_pkg.core"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return "deferred_pkg"


def test_deferred_package_runs_its_init_once_when_a_name_of_its_own_is_asked(
    package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    monkeypatch.setattr(builtins, "deferred_pkg_runs", 0, raising=False)
    defer_package_init(package)
    from deferred_pkg.core import Thing  # type: ignore[import-not-found]

    pkg = sys.modules[package]
    assert builtins.deferred_pkg_runs == 0  # a submodule imports without the __init__

    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(pkg.VERSION)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == ["1"] * 4 and builtins.deferred_pkg_runs == 1
    # The __init__ re-exported the class already loaded, not a second copy.
    assert pkg.Thing is Thing
    with pytest.raises(AttributeError):
        _ = pkg.missing
    assert builtins.deferred_pkg_runs == 1


def test_worker_calls_without_openai_package_inits() -> None:
    """The worker's start-up skips openai's __init__ files, and its calls (an answer, a
    refused key) never need them; a name they define still loads on demand."""
    out = _python("""
        import sys
        from papertag.annotators.worker import defer_openai_inits
        defer_openai_inits()
        from papertag.annotators import PaperInput
        from papertag.annotators.llm import LLMAnnotator
        from papertag.errors import ProviderError
        from tests.fault_server import Reply, fault_server

        paper = PaperInput("p1", "Tiny quant", "We quantize language models to 4 bits.")
        with fault_server() as srv:
            ann = LLMAnnotator(model="fake-model", base_url=srv.url)
            print(len(ann.annotate(paper).technique) > 0)
        with fault_server([Reply(status=401, body={"error": {"message": "bad key"}})]) as srv:
            try:
                LLMAnnotator(model="fake-model", base_url=srv.url).annotate(paper)
            except ProviderError as exc:
                print(type(exc).__name__)
        print(sorted(m for m in ("openai.lib.streaming", "openai.types.responses") if m in sys.modules))
        import openai
        from openai._client import OpenAI
        print(openai.OpenAI is OpenAI, "openai.lib.streaming" in sys.modules)
    """)
    assert out.split("\n")[:4] == ["True", "ProviderError", "[]", "True True"]


def test_command_never_imports_pandas(tmp_path: Path) -> None:
    """DuckDB imports pandas when it can, on the first query with parameters; the
    command keeps it out (a third of a second), and ingests and annotates without it."""
    db = tmp_path / "p.duckdb"
    out = _python(
        """
        import atexit, sys
        import papertag_launch
        atexit.register(lambda: print("pandas loaded:", "pandas" in sys.modules))
        sys.argv = ["papertag", "--db", *sys.argv[1:]]
        papertag_launch.main()
        """,
        str(db),
        "ingest",
        str(DIGESTS[0]),
    )
    assert "pandas loaded: False" in out and "new papers" in out
