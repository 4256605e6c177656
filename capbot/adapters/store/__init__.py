"""The SQLModel store: one database (SQLite by default, PostgreSQL via `database.url`) for all of capbot."""
