"""The database: one DuckDB file, its append-only migrations and its stable views."""

from .migrations import MIGRATIONS
from .store import DB_ENV, DEFAULT_DB, Store, default_db_path, using, utc_now

__all__ = ["DB_ENV", "DEFAULT_DB", "MIGRATIONS", "Store", "default_db_path", "using", "utc_now"]
