import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from habitat_operator import __version__
from habitat_operator.api import ALL_KINDS, GROUP, VERSION, KindInfo
from habitat_operator.api.backup import BACKUP
from habitat_operator.api.crdgen import HEADER, crd, crd_filename, render, render_all, write_crds
from habitat_operator.api.replayjob import REPLAYJOB

# Keywords that make a schema non-structural or that we never mean to emit.
FORBIDDEN = {"$ref", "$defs", "allOf", "anyOf", "oneOf", "not", "title", "const", "nullable", "uniqueItems"}
TYPES = {"object", "array", "string", "integer", "number", "boolean"}


def openapi_schema(kind: KindInfo) -> dict[str, Any]:
    schema: dict[str, Any] = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """A small subset of OpenAPI validation: enough for the keywords we emit."""
    kind = schema["type"]
    checks = {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
    }
    if not checks[kind]:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if kind in ("integer", "number") and not (
        schema.get("minimum", value) <= value <= schema.get("maximum", value)
    ):
        return False
    if kind == "string":
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            return False
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return False
    if kind == "array":
        return len(value) <= schema.get("maxItems", len(value)) and all(
            conforms(item, schema["items"]) for item in value
        )
    if kind == "object":
        properties = schema.get("properties", {})
        return (
            set(schema.get("required", [])) <= value.keys()
            and value.keys() <= properties.keys()
            and all(conforms(item, properties[name]) for name, item in value.items())
        )
    return True


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind: KindInfo) -> None:
    for path, node in walk(openapi_schema(kind)):
        assert node.get("type") in TYPES, f"{path or '<root>'} has no valid type"
        assert not FORBIDDEN & node.keys(), f"{path}: {sorted(FORBIDDEN & node.keys())}"
        assert node.get("additionalProperties", {}) is not False, path
        assert set(node.get("required", [])) <= node.get("properties", {}).keys(), path


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.kind)
def test_every_field_is_described(kind: KindInfo) -> None:
    schema = openapi_schema(kind)
    for section in ("spec", "status"):
        for path, node in walk(schema["properties"][section], section):
            if not path.endswith("[]"):
                assert node.get("description"), f"{path} has no description"


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.kind)
def test_defaults_validate_against_their_own_schema(kind: KindInfo) -> None:
    defaults = [(path, node) for path, node in walk(openapi_schema(kind)) if "default" in node]
    assert defaults or kind is not BACKUP
    for path, node in defaults:
        assert conforms(node["default"], node), f"{path}: default {node['default']!r} is invalid"


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.kind)
def test_cel_rules_reference_existing_fields_and_guard_optional_ones(kind: KindInfo) -> None:
    seen = 0
    for path, node in walk(openapi_schema(kind)):
        properties = node.get("properties", {})
        always_present = set(node.get("required", [])) | {n for n, p in properties.items() if "default" in p}
        for validation in node.get("x-kubernetes-validations", []):
            seen += 1
            assert validation.keys() == {"rule", "message"}
            rule = validation["rule"]
            for var, field in re.findall(r"\b(self|oldSelf)\.(\w+)(?![\w(])", rule):
                assert field in properties, f"{path}: {rule!r} references unknown field {field}"
                if field not in always_present:
                    assert f"has({var}.{field})" in rule, f"{path}: {rule!r} must guard optional {field}"
    assert seen or kind is not BACKUP


# Kinds whose objects run once unless they have a schedule; convergent kinds' specs (Migration,
# ScalePolicy) stay editable, and ReplayJob (suspend, rateLimit) has its own test.
ONE_SHOT_KINDS = [kind for kind in ALL_KINDS if "schedule" in kind.spec_model.model_fields]


@pytest.mark.parametrize("kind", ONE_SHOT_KINDS, ids=lambda k: k.kind)
def test_one_shot_spec_is_immutable(kind: KindInfo) -> None:
    """Transition rules (they read oldSelf) sit on the spec, and nowhere else."""
    transitions = {
        path: [v for v in node.get("x-kubernetes-validations", []) if "oldSelf" in v["rule"]]
        for path, node in walk(openapi_schema(kind))
    }
    assert {path for path, rules in transitions.items() if rules} == {".spec"}
    assert transitions[".spec"] == [
        {
            "rule": "has(oldSelf.schedule) || self == oldSelf",
            "message": f"spec of a one-shot {kind.kind} is immutable; create a new {kind.kind} to run again",
        },
        {
            "rule": "!has(oldSelf.schedule) || has(self.schedule)",
            "message": f"schedule cannot be removed from a scheduled {kind.kind}; "
            f"create a one-shot {kind.kind} instead",
        },
    ]


def test_a_replayjob_changes_only_its_suspend_and_rate_limit() -> None:
    """A ReplayJob has no schedule; one transition rule on the spec pins every other field."""
    transitions = {
        path: [v for v in node.get("x-kubernetes-validations", []) if "oldSelf" in v["rule"]]
        for path, node in walk(openapi_schema(REPLAYJOB))
    }
    assert {path for path, rules in transitions.items() if rules} == {".spec"}
    [rule] = transitions[".spec"]
    fields = set(openapi_schema(REPLAYJOB)["properties"]["spec"]["properties"])
    pinned = set(re.findall(r"self\.(\w+) == oldSelf", rule["rule"]))
    assert fields - pinned == {"suspend", "rateLimit"}
    assert rule["message"].startswith("only suspend and rateLimit of a ReplayJob can change")


def test_list_map_keys_are_required() -> None:
    for path, node in walk(openapi_schema(BACKUP)):
        if node.get("x-kubernetes-list-type") == "map":
            assert set(node["x-kubernetes-list-map-keys"]) <= set(node["items"]["required"]), path


def test_backup_crd_shape() -> None:
    document = crd(BACKUP)
    assert document["apiVersion"] == "apiextensions.k8s.io/v1"
    assert document["kind"] == "CustomResourceDefinition"
    assert document["metadata"] == {  # the version label: `kubectl habitat diagnose` compares it
        "name": "backups.ops.habitat.dev",
        "labels": {"app.kubernetes.io/version": __version__},
    }
    spec = document["spec"]
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "Backup",
        "listKind": "BackupList",
        "plural": "backups",
        "singular": "backup",
        "shortNames": ["hbk", "hbackup"],
        "categories": ["habitat"],
    }
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
    assert version["subresources"] == {"status": {}}
    assert version["additionalPrinterColumns"] == [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Database", "type": "string", "jsonPath": ".status.database"},
        {"name": "Size", "type": "string", "jsonPath": ".status.artifact.size"},
        {"name": "Verified", "type": "string", "jsonPath": ".status.verification", "priority": 1},
        {"name": "Duration", "type": "string", "jsonPath": ".status.duration", "priority": 1},
        {"name": "Schedule", "type": "string", "jsonPath": ".spec.schedule"},
        {"name": "RPO", "type": "string", "jsonPath": ".status.recoverability.rpo"},
        {"name": "Last-Success", "type": "date", "jsonPath": ".status.lastSuccessfulTime", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    schema = version["schema"]["openAPIV3Schema"]
    assert schema["required"] == ["spec"]
    assert list(schema["properties"]) == ["apiVersion", "kind", "metadata", "spec", "status"]


def test_backup_schema_details() -> None:
    properties = openapi_schema(BACKUP)["properties"]
    spec, status = properties["spec"], properties["status"]
    assert spec["required"] == ["storage"]  # and exactly one of database or rabbitmq, by CEL
    assert spec["properties"]["retry"]["default"] == {"limit": 3, "backoff": "30s"}
    assert spec["properties"]["database"]["properties"]["secretRef"]["properties"]["key"]["default"] == "uri"
    assert spec["properties"]["retention"]["properties"]["keepLast"]["minimum"] == 0
    assert "required" not in status
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert status["properties"]["artifact"]["properties"]["sizeBytes"]["format"] == "int64"
    assert status["properties"]["lastSuccessfulTime"]["format"] == "date-time"
    messages = {v["message"] for v in spec["x-kubernetes-validations"]}
    assert "encryption is supported with format: custom, or with storage.s3" in messages


@pytest.mark.parametrize(
    ("schedule", "valid"),
    [
        ("0 3 * * *", True),
        ("*/5 1-5 ? JAN,FEB MON-FRI", True),
        ("@weekly", True),
        ("@every 5m", False),
        ("0 3 * *", False),
        ("0 3 * * * *", False),
        ("", False),
    ],
)
def test_cron_pattern(schedule: str, valid: bool) -> None:
    pattern = openapi_schema(BACKUP)["properties"]["spec"]["properties"]["schedule"]["pattern"]
    assert bool(re.search(pattern, schedule)) is valid


def test_yaml_is_deterministic_and_parses() -> None:
    text = render_all()
    assert text == render_all()
    assert text.startswith(HEADER)
    documents = list(yaml.safe_load_all(text))
    assert documents == [crd(kind) for kind in ALL_KINDS]


def test_write_crds(tmp_path: Path) -> None:
    written = write_crds(tmp_path / "crds")
    assert [p.name for p in written] == [*(crd_filename(kind) for kind in ALL_KINDS), "kustomization.yaml"]
    assert (tmp_path / "crds" / "ops.habitat.dev_backups.yaml").read_text() == render(BACKUP)


@pytest.mark.parametrize("kind", ALL_KINDS, ids=lambda k: k.kind)
def test_a_libpq_description_is_only_on_a_database_reference(kind: KindInfo) -> None:
    """SecretKeyRef's description of its key speaks of PostgreSQL: a Secret of another service's
    URL (RabbitMQ's) says what it holds instead."""
    libpq = [path for path, node in walk(openapi_schema(kind)) if "libpq" in node.get("description", "")]
    assert [path for path in libpq if ".database" not in path and ".target" not in path] == []
