"""The ``papertag`` command: parses arguments, calls the library, prints results.

Every error papertag raises on purpose becomes one line on stderr and exit
code 1 (2 for usage errors); nothing here holds logic of its own. One module per
stage registers its commands on :data:`.app.app`.
"""

# isort: off
# In the order data flows: `papertag --help` lists the commands in the order they are
# registered (the command groups, batches and review, after them all).
from . import ingest, annotate, daily, models, batches, query, review

# isort: on
from .app import app, main

__all__ = [
    "annotate",
    "app",
    "batches",
    "daily",
    "ingest",
    "main",
    "models",
    "query",
    "review",
]
