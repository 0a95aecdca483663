"""Where ledgers live: the SQL store for SQLite (embedded, the default) and PostgreSQL."""

from ledgerflow.store.sql import NOTIFY_CHANNEL, SQLStore, StoredRecord, normalise_url

__all__ = ["NOTIFY_CHANNEL", "SQLStore", "StoredRecord", "normalise_url"]
