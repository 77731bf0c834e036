"""WalArchive: streaming a server's WAL and base backups into an archive (docs/pitr.md)."""
