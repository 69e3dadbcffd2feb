"""The ``papertag`` command: parses arguments, calls the library, prints results.

Every error papertag raises on purpose becomes one line on stderr and exit
code 1 (2 for usage errors); nothing here holds logic of its own. One module per
stage registers its commands on :data:`.app.app`.
"""

from . import annotate, ingest, query, review
from .app import app, main

__all__ = ["annotate", "app", "ingest", "main", "query", "review"]
