"""WAL archiving for point-in-time recovery: names, the archive's objects, streaming and base backups."""
