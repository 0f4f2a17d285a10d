"""The local database: tables, engine, migrations, writes and snapshots."""
