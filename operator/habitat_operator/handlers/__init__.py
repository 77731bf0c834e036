"""Kopf glue, one module per kind; importing this package registers every handler."""

from habitat_operator.handlers import backup, replayjob, restore

__all__ = ["backup", "replayjob", "restore"]
