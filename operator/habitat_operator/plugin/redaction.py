"""Redaction for the support report: what leaves the cluster in a report holds no secret.

Three layers, each enough for what it covers:
- Secrets are reported as names, types and keys; their values are only ever held in memory, as
  the needles below.
- Patterns: the password of every URI (`scheme://user:password@host`), and the value of every
  field or `key=value` whose key names a password, secret, token or credential.
- Needles: every value of every Secret read (and the password inside a URI value) is replaced
  wherever it appears, raw, percent-encoded, base64 or JSON-escaped, in every string and then in
  every file's whole text. Values shorter than MIN_NEEDLE characters are left to the patterns,
  which would otherwise blank out every short word they match.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

REDACTED = "REDACTED"
MIN_NEEDLE = 4

_SENSITIVE = r"(?:password|passwd|pwd|secret|token|credential|api[-_]?key|access[-_]?key|private[-_]?key)"
SENSITIVE_KEY = re.compile(rf"{_SENSITIVE}", re.IGNORECASE)
# A key=value or "key": "value" in free text (logs, messages), on one line. An unquoted value runs to
# the next space or quote, & and ; included: redacting a query string's tail is the safe mistake.
_KEY_VALUE = re.compile(
    rf"""(?P<key>[\w.-]*{_SENSITIVE}[\w.-]*)(?P<sep>["']?[ \t]*[=:][ \t]*)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"|'[^']*'|(?![{\[])[^\s"']+)""",
    re.IGNORECASE,
)
# A URI's authority and what follows, up to whitespace or a quote; the userinfo ends at its last @.
_URI = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s\"'<>`]+)")


def redact_uri_passwords(text: str) -> str:
    """`scheme://user:password@host` as `scheme://user:REDACTED@host`; a raw password holding @, /, #
    or ? is cut at the URI's last @, so none of it survives."""

    def replace(match: re.Match[str]) -> str:
        rest = match["rest"]
        userinfo, at, host = rest.rpartition("@")
        if not at or ":" not in userinfo:
            return match[0]
        user = userinfo.split(":", 1)[0]
        return f"{match['scheme']}{user}:{REDACTED}@{host}"

    return _URI.sub(replace, text)


def redact_key_values(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        value = match["value"]
        quote_char = value[0] if value[0] in "\"'" else ""
        return f"{match['key']}{match['sep']}{quote_char}{REDACTED}{quote_char}"

    return _KEY_VALUE.sub(replace, text)


def redact_patterns(text: str) -> str:
    return redact_key_values(redact_uri_passwords(text))


class Redactor:
    """Redacts text and kubectl's JSON with the patterns and with the needles of the Secrets it was
    given (`add_secret`)."""

    def __init__(self) -> None:
        self._needles: set[str] = set()

    def add_secret(self, secret: Mapping[str, Any]) -> None:
        """Learns a Secret's values (kubectl's JSON: base64 `data`, plain `stringData`)."""
        for value in (secret.get("data") or {}).values():
            try:
                self.add_value(base64.b64decode(value).decode())
            except (ValueError, UnicodeDecodeError):  # binary: its base64 form is the needle
                self._add(str(value))
        for value in (secret.get("stringData") or {}).values():
            self.add_value(str(value))

    def add_value(self, value: str) -> None:
        self._add(value)
        if "://" in value:
            try:
                password = urlsplit(value.strip()).password
            except ValueError:
                password = None
            if password:
                self._add(password)
                self._add(unquote(password))

    def _add(self, value: str) -> None:
        if len(value) < MIN_NEEDLE:
            return
        for form in (
            value,
            quote(value, safe=""),
            quote(value),
            quote_plus(value),
            base64.b64encode(value.encode()).decode(),
            base64.urlsafe_b64encode(value.encode()).decode(),
            json.dumps(value)[1:-1],
            value.replace("'", "''"),  # in a single-quoted YAML scalar
        ):
            if len(form) >= MIN_NEEDLE:
                self._needles.add(form)
                self._needles.add(form.rstrip("="))  # base64 inside a longer base64 text loses its padding

    @property
    def needles(self) -> frozenset[str]:
        return frozenset(self._needles)

    def text(self, text: str) -> str:
        """A whole file: needles first, longest first, then the patterns."""
        for needle in sorted(self._needles, key=len, reverse=True):
            if needle in text:
                text = text.replace(needle, REDACTED)
        return redact_patterns(text)

    def data(self, data: Any) -> Any:
        """kubectl's JSON, copied with the patterns applied to every string, and every scalar under a
        sensitive key (or the `value` of a `{name: PASSWORD, value: ...}` pair, as container env has
        it) replaced. The needles are searched for in the text it becomes (`text`): once per file,
        not once per string, since a namespace may hold thousands of strings and hundreds of needles."""
        if isinstance(data, Mapping):
            env_like = isinstance(data.get("name"), str) and SENSITIVE_KEY.search(data["name"])
            return {
                key: REDACTED
                if _scalar(value) and (SENSITIVE_KEY.search(str(key)) or (env_like and key == "value"))
                else self.data(value)
                for key, value in data.items()
            }
        if isinstance(data, list):
            return [self.data(item) for item in data]
        if isinstance(data, str):
            return self._string(data)
        return data

    def _string(self, text: str) -> str:
        """A string; one holding a JSON object (kubectl's last-applied-configuration annotation, a
        structured log line) is redacted as data, so its `{name: PGPASSWORD, value: ...}` pairs are too."""
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                return json.dumps(self.data(parsed), separators=(",", ":"))
        return redact_patterns(text)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float) and not isinstance(value, bool)


def secret_summary(secret: Mapping[str, Any]) -> dict[str, Any]:
    """What the report says of a Secret: its name, type and keys, never a value."""
    meta = secret["metadata"]
    keys: Iterable[str] = {**(secret.get("data") or {}), **(secret.get("stringData") or {})}
    return {
        "name": meta["name"],
        "namespace": meta.get("namespace"),
        "type": secret.get("type"),
        "keys": sorted(keys),
    }
