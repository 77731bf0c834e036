"""Names derived from other names, shortened with a hash when they would not fit.

Kubernetes names may be 253 characters, label values 63, PostgreSQL identifiers 63 bytes; a derived
name that is cut keeps a readable head and ends with a hash of the whole, so two long names that
share a head still come out different.
"""

from __future__ import annotations

import hashlib
import re

HASH_CHARS = 10


def digest(text: str, chars: int = HASH_CHARS) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:chars]


def fit(name: str, limit: int, separator: str = "-") -> str:
    """`name` itself when it fits in `limit` characters, else its head, `separator` and a hash."""
    if len(name) <= limit:
        return name
    head = name[: limit - HASH_CHARS - len(separator)].rstrip("-._")
    return f"{head}{separator}{digest(name)}"


def database_identifier(prefix: str, unique: str, readable: str) -> str:
    """A PostgreSQL identifier (lower case, [a-z0-9_], within 63 bytes) that is unique per `unique`
    (e.g. a namespace and uid) and recognisable by `readable` (e.g. the object's name)."""
    tail = f"_{digest(unique, 12)}"
    head = re.sub(r"[^a-z0-9_]", "_", f"{prefix}{readable}".lower())
    return head[: 63 - len(tail)] + tail
