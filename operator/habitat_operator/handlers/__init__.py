"""Kopf glue, one module per kind; importing this package registers every handler."""

from habitat_operator.handlers import backup, login, migration, replayjob, restore, scalepolicy, walarchive

__all__ = ["backup", "login", "migration", "replayjob", "restore", "scalepolicy", "walarchive"]
