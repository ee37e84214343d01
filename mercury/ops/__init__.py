"""Operating an install for years: the service unit, backups, status, database moves.

Each module owns one operator task and is driven by one `mercury` command (mercury/cli/):
service.py (systemd unit), backup.py / restore.py (one archive with a manifest),
status.py (one screen from the database), dbcopy.py (SQLite to PostgreSQL).
"""
