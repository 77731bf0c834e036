"""RabbitMQ definitions (the management API's export document), as pure functions: decoding with a
bound, stripping password hashes, what an import would change, and what it may carry.

Invariants: a document leaves `strip_hashes` without any `password_hash` unless asked to keep them;
`import_body` never carries a user without a password hash (RabbitMQ would clear the password of an
existing user imported without one) nor permissions of a user the broker will not have.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from habitat_operator.api.rabbitmq_definitions import MAX_CHANGED_NAMES, DefinitionChanges, DefinitionsReason
from habitat_operator.errors import PermanentError

Definitions = dict[str, Any]

MAX_DEFINITIONS_BYTES = 8 * 2**20  # tens of thousands of queues; parsed, a few times that in memory
MAX_NAME_CHARS = 600

# The identity of each type's entries: two entries with the same identity are the same definition.
# A per-vhost export has no "vhost" fields; both sides of a comparison then lack them alike.
IDENTITY: Mapping[str, tuple[str, ...]] = {
    "vhosts": ("name",),
    "users": ("name",),
    "permissions": ("user", "vhost"),
    "topic_permissions": ("user", "vhost", "exchange"),
    "global_parameters": ("name",),
    "parameters": ("vhost", "component", "name"),
    "policies": ("vhost", "name"),
    "exchanges": ("vhost", "name"),
    "queues": ("vhost", "name"),
    "bindings": ("vhost", "source", "destination_type", "destination", "routing_key", "arguments"),
}
HASH_FIELD = "password_hash"
# The artifact's own record of what was exported; RabbitMQ's import ignores keys it does not know,
# and `unwrap` removes it before an import anyway.
EXPORT_FIELD = "habitat_export"


def decode(body: bytes, what: str) -> Definitions:
    """A definitions document from JSON, refused when larger than MAX_DEFINITIONS_BYTES or not the
    shape of one (an object whose known types are lists of objects). Blocking (parsing): in a thread."""
    if len(body) > MAX_DEFINITIONS_BYTES:
        raise too_large(what)
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # a hostile document may nest deeper than Python parses
        raise _not_definitions(what, "it is not JSON") from None
    return check_shape(document, what)


def check_shape(document: Any, what: str) -> Definitions:
    if not isinstance(document, dict):
        raise _not_definitions(what, "it is not a JSON object")
    for kind in IDENTITY:
        entries = document.get(kind, [])
        if not isinstance(entries, list) or not all(isinstance(entry, dict) for entry in entries):
            raise _not_definitions(what, f"its {kind} are not a list of objects")
    return document


def encode(definitions: Definitions) -> bytes:
    """The document as stored: compact, keys sorted, so the same definitions give the same bytes."""
    return json.dumps(definitions, sort_keys=True, separators=(",", ":")).encode()


def too_large(what: str) -> PermanentError:
    return PermanentError(
        DefinitionsReason.DEFINITIONS_TOO_LARGE, f"{what} are larger than {MAX_DEFINITIONS_BYTES} bytes"
    )


def artifact_document(export: Definitions, vhost: str | None, keep_hashes: bool) -> Definitions:
    """What a Backup stores: the broker's export, without users' password hashes unless
    `keep_hashes`, and which vhost it is of (None: the whole broker)."""
    document = {**export, EXPORT_FIELD: {"vhost": vhost, "includeUsers": keep_hashes}}
    if not keep_hashes and "users" in export:
        document["users"] = [{k: v for k, v in user.items() if k != HASH_FIELD} for user in export["users"]]
    return document


def unwrap(document: Definitions, what: str) -> tuple[Definitions, str | None]:
    """The definitions of a stored artifact, and the vhost they are of (None: the whole broker)."""
    export = document.get(EXPORT_FIELD)
    if not isinstance(export, dict):
        raise _not_definitions(what, f"it has no {EXPORT_FIELD} record")
    vhost = export.get("vhost")
    if vhost is not None and (not isinstance(vhost, str) or not vhost):
        raise _not_definitions(what, "its vhost is not a name")
    return {k: v for k, v in document.items() if k != EXPORT_FIELD}, vhost


def counts(definitions: Definitions) -> dict[str, int]:
    """How many entries of each type the document holds (types it lacks: none)."""
    return {kind: len(definitions[kind]) for kind in IDENTITY if definitions.get(kind)}


def describe_counts(definitions: Definitions) -> str:
    """E.g. "2 exchanges, 3 queues, 3 bindings"; the types of the document only."""
    found = counts(definitions)
    return ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in found.items()) or "no definitions"


def has_topology(definitions: Definitions) -> bool:
    """Whether the broker (or vhost) holds queues, or exchanges other than its default ones."""
    exchanges = [e for e in definitions.get("exchanges", []) if not _is_default_exchange(e.get("name"))]
    return bool(exchanges or definitions.get("queues"))


def _is_default_exchange(name: Any) -> bool:
    return not name or str(name).startswith("amq.")


def import_body(artifact: Definitions, current: Definitions) -> tuple[Definitions, dict[str, int]]:
    """What to POST: the artifact without users it has no hash for, and without permissions of users
    neither imported nor on the broker; and how many entries of each type were left out."""
    users = [user for user in artifact.get("users", []) if user.get(HASH_FIELD)]
    # Names as text: a hostile document's name may be a list, which no set can hold.
    known_users = {str(user.get("name")) for user in [*users, *current.get("users", [])]}
    body = dict(artifact)
    skipped: dict[str, int] = {}
    if "users" in artifact:
        body["users"] = users
        skipped["users"] = len(artifact["users"]) - len(users)
    for kind in ("permissions", "topic_permissions"):
        if kind in artifact:
            body[kind] = [entry for entry in artifact[kind] if str(entry.get("user")) in known_users]
            skipped[kind] = len(artifact[kind]) - len(body[kind])
    return body, {kind: n for kind, n in skipped.items() if n}


def plan(body: Definitions, current: Definitions, skipped: Mapping[str, int]) -> list[DefinitionChanges]:
    """Per type, what importing `body` into a broker holding `current` creates, updates and leaves
    as it is (an import never deletes), with the first MAX_CHANGED_NAMES names created or updated;
    types the import carries nothing of are left out."""
    changes = []
    for kind, identity in IDENTITY.items():
        if not body.get(kind) and not skipped.get(kind):
            continue
        existing = {_identity(entry, identity): entry for entry in current.get(kind, [])}
        change = DefinitionChanges(type=kind, skipped=skipped.get(kind, 0))
        names: list[str] = []
        for entry in body.get(kind, []):
            found = existing.get(_identity(entry, identity))
            if found is None:
                change.create += 1
            elif _comparable(found) != _comparable(entry):
                change.update += 1
            else:
                change.unchanged += 1
                continue
            if len(names) < MAX_CHANGED_NAMES:
                names.append(display_name(kind, entry))
        change.names = names
        changes.append(change)
    return changes


def describe_plan(changes: Iterable[DefinitionChanges]) -> str:
    """One line, e.g. "exchanges: 1 to create (habitat.ledger); queues: 2 unchanged"."""
    parts = []
    for change in changes:
        counted = [
            f"{n} {what}"
            for n, what in (
                (change.create, "to create"),
                (change.update, "to update"),
                (change.unchanged, "unchanged"),
                (change.skipped, "skipped"),
            )
            if n
        ]
        named = f" ({', '.join(change.names)})" if change.names else ""
        parts.append(f"{change.type}: {', '.join(counted) or 'none'}{named}")
    return "; ".join(parts) or "nothing to import"


def display_name(kind: str, entry: Mapping[str, Any]) -> str:
    """A definition as a person names it, never with a secret: e.g. "habitat.ledger -> queue q (a.#)"."""
    if kind == "bindings":
        text = (
            f"{entry.get('source') or '(default)'} -> {entry.get('destination_type', 'queue')} "
            f"{entry.get('destination')} ({entry.get('routing_key', '')})"
        )
    elif kind in ("permissions", "topic_permissions"):
        text = f"{entry.get('user')}@{entry.get('vhost')}"
    else:
        text = str(entry.get("name"))
    vhost = entry.get("vhost") if kind not in ("permissions", "topic_permissions") else None
    text = f"{vhost}: {text}" if vhost else text
    return text if len(text) <= MAX_NAME_CHARS else text[: MAX_NAME_CHARS - 1] + "…"


def redact(text: str, definitions: Definitions) -> str:
    """`text` (e.g. a broker's error) with every password hash of the document blanked out."""
    for user in definitions.get("users", []):
        secret = user.get(HASH_FIELD)
        if isinstance(secret, str) and secret:
            text = text.replace(secret, "<redacted>")
    return text


def _identity(entry: Mapping[str, Any], fields: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(json.dumps(entry.get(field), sort_keys=True) for field in fields)


def _comparable(entry: Mapping[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True)


def _not_definitions(what: str, why: str) -> PermanentError:
    return PermanentError(
        DefinitionsReason.ARTIFACT_KIND_MISMATCH, f"{what} are not RabbitMQ definitions: {why}"
    )
