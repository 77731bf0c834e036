"""The support report's redaction (plugin/redaction.py): a known password, with every character a URI
treats specially, leaves no trace in any encoding. The whole zip: tests/e2e/test_plugin_actions.py."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import yaml

from habitat_operator.plugin.redaction import (
    REDACTED,
    Redactor,
    redact_patterns,
    secret_summary,
)

PASSWORD = "s3cr@t:/p%25w#rd?x=1&y"
URI = f"postgresql://app:{quote(PASSWORD, safe='')}@db.internal:5432/app?sslmode=require"


def forms(value: str) -> set[str]:
    """Every way the value may be written down: raw, percent-encoded, base64, JSON-escaped."""
    return {
        value,
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        base64.b64encode(value.encode()).decode(),
        base64.b64encode(value.encode()).decode().rstrip("="),
        json.dumps(value)[1:-1],
    }


def leaks(text: str) -> set[str]:
    return {form for form in forms(PASSWORD) | forms(URI) if form in text}


def test_uri_passwords_are_redacted_encoded_or_raw_and_the_rest_stays_readable() -> None:
    assert redact_patterns(URI) == "postgresql://app:REDACTED@db.internal:5432/app?sslmode=require"
    raw = f"could not connect to amqp://guest:{PASSWORD}@broker:5672/%2F: refused"
    assert redact_patterns(raw) == "could not connect to amqp://guest:REDACTED@broker:5672/%2F: refused"
    assert (
        redact_patterns("https://s3.example/bucket and user@host")
        == "https://s3.example/bucket and user@host"
    )


def test_password_fields_in_free_text_are_redacted() -> None:
    line = f'{{"event": "login", "password": "{PASSWORD}", "user": "app"}} PGPASSWORD={PASSWORD} token=abc'
    assert redact_patterns(line) == (
        '{"event": "login", "password": "REDACTED", "user": "app"} PGPASSWORD=REDACTED token=REDACTED'
    )
    # Secret references are names, not values: they stay readable.
    assert redact_patterns("secretRef: {name: habitat-db}") == "secretRef: {name: habitat-db}"


def test_a_secrets_values_are_found_in_every_encoding_anywhere() -> None:
    redactor = Redactor()
    secret = {
        "metadata": {"name": "habitat-db", "namespace": "app"},
        "type": "Opaque",
        "data": {
            "uri": base64.b64encode(URI.encode()).decode(),
            "pw": base64.b64encode(PASSWORD.encode()).decode(),
        },
    }
    redactor.add_secret(secret)
    document = {
        "metadata": {
            "annotations": {
                "copy": base64.b64encode(PASSWORD.encode()).decode(),
                "note": quote_plus(PASSWORD),
            }
        },
        "spec": {
            "containers": [
                {
                    "env": [
                        {"name": "DATABASE_URL", "value": URI},
                        {"name": "DB_PASSWORD", "value": "other-pw-1"},
                    ]
                }
            ]
        },
        "message": f"connecting with {PASSWORD} failed",
        "accessKey": "AKIA0000",
    }
    text = redactor.text(yaml.safe_dump(redactor.data(document), width=float("inf")))

    assert leaks(text) == set()
    assert "other-pw-1" not in text and "AKIA0000" not in text
    assert "DATABASE_URL" in text and "db.internal:5432" in text  # what support needs stays
    assert text.count(REDACTED) >= 5
    assert secret_summary(secret) == {
        "name": "habitat-db",
        "namespace": "app",
        "type": "Opaque",
        "keys": ["pw", "uri"],
    }


def test_short_values_are_left_to_the_patterns() -> None:
    redactor = Redactor()
    redactor.add_value("app")
    assert redactor.text("app uses approach") == "app uses approach"


def test_json_inside_a_string_is_redacted_as_data() -> None:
    """kubectl apply keeps the whole manifest in an annotation: its env pairs are found there too."""
    applied = json.dumps(
        {"spec": {"env": [{"name": "PGPASSWORD", "value": PASSWORD}, {"name": "MODE", "value": "x"}]}}
    )
    annotations = {"kubectl.kubernetes.io/last-applied-configuration": applied}

    redacted = Redactor().data({"metadata": {"annotations": annotations}})

    inner = json.loads(
        redacted["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
    )
    assert inner["spec"]["env"] == [{"name": "PGPASSWORD", "value": REDACTED}, {"name": "MODE", "value": "x"}]
