"""The SQLite store: migrations, typed rows, the one write path and the read-only readers."""
