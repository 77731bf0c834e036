import itertools
from urllib.parse import quote, unquote

import pytest

from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import OperationError

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


# ---------------------------------------------------------------- one parser (security review, finding 5)

PASSWORD_PIECES = ("Sl", "ashPw99")


def refused(uri: str) -> OperationError:
    with pytest.raises(OperationError) as caught:
        ConnectionTarget(uri)
    assert caught.value.reason == "InvalidConnectionUri"
    assert not caught.value.retryable
    return caught.value


def test_unencoded_slash_in_password_is_refused_without_showing_it() -> None:
    """libpq read host `app`, port `Sl`; the display showed `app:Sl/ashPw99@...`."""
    error = refused("postgresql://app:Sl/ashPw99@127.0.0.1:52375/bench")
    assert "percent-encode special characters in the password" in error.message
    assert "%2F" in error.message
    for piece in (*PASSWORD_PIECES, "Sl/ashPw99", "Sl%2FashPw99"):
        assert piece not in error.message
        assert piece not in repr(error)


def test_unencoded_slash_with_a_numeric_start_is_refused() -> None:
    """Both parsers read host `app`, port `1234`, database `ashPw99@127.0.0.1:52375/bench`."""
    error = refused("postgresql://app:1234/ashPw99@127.0.0.1:52375/bench")
    assert "percent-encode" in error.message
    assert "1234" not in error.message
    assert "ashPw99" not in error.message


# Unencoded, each moves a boundary of the URI for libpq or for every URL parser. (`[` and `]` do
# for some versions of urlsplit only: the any-password test below holds either way.)
SPECIAL_PASSWORDS = [
    "Sec/ret99",
    "Sec@ret99",
    "Sec#ret99",
    "Sec?ret99",
    "1234/ret99",
    "Sec/ret?x=1",
    "Sec/ret#99",
    "Sec?host=evil",
    "Sec:ret/99",
    "Sec/ret99?sslmode=require",
]


@pytest.mark.parametrize("password", SPECIAL_PASSWORDS)
@pytest.mark.parametrize(
    "template",
    [
        "postgresql://app:{password}@db.example:6543/habitat",
        "postgresql://app:{password}@db.example/habitat?sslmode=require",
        "postgresql://app:{password}@h1:5432,h2:5433/habitat",
        "postgresql://app:{password}@[::1]:5432/habitat",
    ],
)
def test_unencoded_special_characters_in_password_are_refused(template: str, password: str) -> None:
    error = refused(template.format(password=password))
    assert "percent-encode special characters in the password" in error.message
    for form in (password, quote(password, safe=""), "Sec", "ret99"):
        assert form not in error.message


@pytest.mark.parametrize(
    "template",
    [
        "postgresql://app:{password}@db.example:6543/habitat",
        "postgresql://app:{password}@[::1]:6543/habitat?sslmode=require",
        "postgresql://app:{password}@h1:6543,h2:6544/habitat",
        "postgresql://app@db.example:6543/habitat?password={password}",
    ],
)
def test_any_password_is_either_read_as_written_or_refused_unseen(template: str) -> None:
    """Every password of up to three special characters between two markers."""
    specials = "/@#?[]:,=;'\"\\ +!$%"
    for password in ("Sec" + "".join(chars) + "ret99" for chars in itertools.product(specials, repeat=3)):
        uri = template.format(password=password)
        try:
            target = ConnectionTarget(uri)
        except OperationError as error:
            assert error.reason == "InvalidConnectionUri"
            assert "Sec" not in error.message and "ret99" not in error.message, uri
            continue
        assert target.env()["PGPASSWORD"] in (password, unquote(password)), uri
        assert target.env()["PGDATABASE"] == "habitat", uri
        assert target.port.startswith("6543"), uri
        assert "Sec" not in target.display and "ret99" not in target.display, uri
        assert "Sec" not in target.redact(f"{uri} {password} {unquote(password)}"), uri


@pytest.mark.parametrize(
    "password", [*SPECIAL_PASSWORDS, "Sec[r]et99", "Sec]ret99", "Sec%ret99", "Sec ret99", "S&e=c;r'e\"t\\99"]
)
def test_percent_encoded_password_round_trips(password: str) -> None:
    uri = f"postgresql://app:{quote(password, safe='')}@db.example:6543/habitat?sslmode=require"
    target = ConnectionTarget(uri)
    assert target.env()["PGPASSWORD"] == password
    assert target.env()["PGHOST"] == "db.example"
    assert target.env()["PGUSER"] == "app"
    assert target.display == "db.example:6543/habitat"
    assert password not in target.display and password not in repr(target)
    raw = quote(password, safe="")
    assert target.redact(f"{uri} {password} {raw}") == "*** *** ***"


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://h/db#fragment",  # libpq's database is `db#fragment`, a URL parser's `db`
        "postgresql://h/db?host=other#x",
        "postgresql://h/db?application_name=a@b",  # an `@` outside the user information
    ],
)
def test_uris_read_differently_by_a_url_parser_are_refused(uri: str) -> None:
    assert "percent-encode" in refused(uri).message


def test_display_comes_from_libpq() -> None:
    assert (
        ConnectionTarget("postgresql://%2Fvar%2Frun%2Fpostgresql/db").display == "/var/run/postgresql:5432/db"
    )
    assert ConnectionTarget("postgresql:///db?host=/tmp&port=6432").display == "/tmp:6432/db"
    assert ConnectionTarget("postgresql://h/db?dbname=other").display == "h:5432/other"
    assert ConnectionTarget("postgresql://[fe80::1%25eth0]:5/db").display == "[fe80::1%eth0]:5/db"
    assert ConnectionTarget("postgresql://a%40b:pw@h/db").env()["PGUSER"] == "a@b"


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://u:hunter2@h:abc/db",
        "postgresql://u:hunter2@h:0/db",
        "postgresql://u:hunter2@h:65536/db",
        "postgresql://u:hunter2@h:99999/db",
        "postgresql://u:hunter2@h1:5432,h2:x/db",
        "postgresql://u:hunter2@h/db?port=abc",
        "postgresql://u:hunter2@h/db?port=-1",
    ],
)
def test_bad_port_is_refused_at_parse_time(uri: str) -> None:
    error = refused(uri)
    assert "port" in error.message
    assert "hunter2" not in error.message


def test_good_ports() -> None:
    assert ConnectionTarget("postgresql://h:1/db").port == "1"
    assert ConnectionTarget("postgresql://h:65535/db").port == "65535"
    assert ConnectionTarget("postgresql://h1:5432,h2/db").port == "5432,"


@pytest.mark.parametrize(
    ("parameter", "good"),
    [
        ("sslmode", "verify-full"),
        ("gssencmode", "disable"),
        ("target_session_attrs", "read-write"),
        ("channel_binding", "require"),
        ("load_balance_hosts", "random"),
        ("sslcertmode", "allow"),
    ],
)
def test_enumerated_parameters_are_checked_at_parse_time(parameter: str, good: str) -> None:
    assert ConnectionTarget(f"postgresql://h/db?{parameter}={good}").env()  # accepted
    error = refused(f"postgresql://u:hunter2@h/db?{parameter}=bogus")
    assert parameter in error.message
    assert good in error.message  # the allowed values are listed
    assert "bogus" not in error.message  # the value given is not quoted
    assert "hunter2" not in error.message


def test_query_password_with_special_characters_is_redacted() -> None:
    uri = "postgresql://app@h/db?password=Sec%23ret%2F99"
    target = ConnectionTarget(uri)
    assert target.env()["PGPASSWORD"] == "Sec#ret/99"
    assert target.redact(f"{uri} Sec#ret/99 Sec%23ret%2F99") == "*** *** ***"
    # An unencoded `#` in a query password: libpq reads it all, so must the redaction.
    hashed = ConnectionTarget("postgresql://app@h/db?password=Sec#ret99")
    assert hashed.env()["PGPASSWORD"] == "Sec#ret99"
    assert hashed.redact("auth failed for Sec#ret99") == "auth failed for ***"
    assert "Sec" not in hashed.display


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://app@h/db?password=Sec&ret99",
        "postgresql://app@h/db?password=Sec&ret99=1",
        "postgresql://app@h/db?password=Sec%zz&ret99",
        "postgresql://app@h/db?password=Sec ret99",
        'postgresql://app@h/db?password=Sec"=ret99',
        "postgresql://app:Sec%zzret99@h/db",
        "postgresql://app:Sec ret99@h/db",
        "postgresql://app:Sec%00ret99@h/db",
        "postgresql://app:Sec%C3%28ret99@h/db",  # not UTF-8 once decoded
    ],
)
def test_libpq_errors_never_show_a_piece_of_the_password(uri: str) -> None:
    error = refused(uri)
    assert error.message.startswith("invalid connection URI")
    assert "Sec" not in error.message
    assert "ret99" not in error.message


def test_libpq_errors_still_name_the_parameter_without_a_query_password() -> None:
    assert "bogus" in refused("postgresql://u:hunter2@h/db?bogus=1").message
