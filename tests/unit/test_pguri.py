import pytest

from habitat_operator.ops.errors import OperationError
from habitat_operator.ops.pguri import ConnectionTarget

URI = "postgresql://app:s3cr%40t-pw@db.example:6543/habitat?sslmode=require&connect_timeout=5"
PASSWORD = "s3cr@t-pw"


def test_display_has_no_credentials() -> None:
    target = ConnectionTarget(URI)
    assert target.display == "db.example:6543/habitat"
    assert repr(target) == "ConnectionTarget('db.example:6543/habitat')"
    assert "app" not in target.display


def test_display_defaults() -> None:
    assert ConnectionTarget("postgresql:///habitat").display == "localhost:5432/habitat"
    assert ConnectionTarget("postgresql://bob@host").display == "host:5432/bob"
    assert ConnectionTarget("postgres://[::1]:5433/db").display == "[::1]:5433/db"


def test_env_carries_everything_including_query_parameters() -> None:
    assert ConnectionTarget(URI).env() == {
        "PGHOST": "db.example",
        "PGPORT": "6543",
        "PGUSER": "app",
        "PGPASSWORD": PASSWORD,
        "PGDATABASE": "habitat",
        "PGSSLMODE": "require",
        "PGCONNECT_TIMEOUT": "5",
        "PGAPPNAME": "habitat-operator",
    }


def test_env_defaults_connect_timeout_and_keeps_given_application_name() -> None:
    env = ConnectionTarget("postgresql://h/db?application_name=mine").env()
    assert env["PGAPPNAME"] == "mine"
    assert env["PGCONNECT_TIMEOUT"] == "10"
    assert "PGPASSWORD" not in env


def test_multiple_hosts() -> None:
    target = ConnectionTarget("postgresql://u:pw@h1:5432,h2:5433/db?target_session_attrs=read-write")
    assert target.env()["PGHOST"] == "h1,h2"
    assert target.env()["PGPORT"] == "5432,5433"
    assert target.env()["PGTARGETSESSIONATTRS"] == "read-write"
    assert target.display == "h1,h2:5432,5433/db"


def test_conninfo_connects_to_the_same_place() -> None:
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(ConnectionTarget(URI).conninfo())
    assert params["host"] == "db.example"
    assert params["password"] == PASSWORD
    assert params["application_name"] == "habitat-operator"


def test_redact_removes_uri_and_password_in_any_form() -> None:
    target = ConnectionTarget(URI)
    text = f"failed: {URI}; decoded {PASSWORD}; encoded s3cr%40t-pw; user app"
    redacted = target.redact(text)
    assert PASSWORD not in redacted
    assert "s3cr%40t-pw" not in redacted
    assert URI not in redacted
    assert redacted == "failed: ***; decoded ***; encoded ***; user app"


def test_redact_without_password_changes_nothing_else() -> None:
    target = ConnectionTarget("postgresql://app@h/db")
    assert target.redact("could not connect to app@h") == "could not connect to app@h"


@pytest.mark.parametrize(
    "uri",
    [
        "host=h password=hunter2",
        "mysql://u:hunter2@h/db",
        "postgresql://u:hunter2@h/db?bogus=1",
        "postgresql://u:hunter2%zz@h/db",
        "postgresql://u:hunter2@h/db?keepalives=1",
    ],
)
def test_invalid_uris_are_rejected_without_echoing_the_password(uri: str) -> None:
    with pytest.raises(OperationError) as caught:
        ConnectionTarget(uri)
    assert caught.value.reason == "InvalidConnectionUri"
    assert not caught.value.retryable
    assert "hunter2" not in str(caught.value)


def test_unsupported_parameter_is_named() -> None:
    with pytest.raises(OperationError, match="keepalives"):
        ConnectionTarget("postgresql://h/db?keepalives=1")
