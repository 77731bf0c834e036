"""A libpq connection URI, split into what subprocesses, psycopg and log messages may each see.

One parser, libpq's (`conninfo_to_dict`), decides where the URI connects and what `display` shows,
so the place that is shown is the place that is connected to. A URI that a URL parser
(`urllib.parse.urlsplit`) reads differently is refused before either can matter: an unencoded
`/`, `@`, `#`, `?`, `[` or `]` in a password moves the boundaries of the URI's parts, so libpq would
connect somewhere else and the password would end up in the host, port or database. Values libpq
would reject only when connecting (a bad port, `sslmode=bogus`) are refused here, at parse time.

pg_dump and pg_restore get the connection through PG* environment variables only, so the password
never shows up on a command line (and so in `ps` or /proc). Every text that could echo the URI is
passed through `ConnectionTarget.redact` before it reaches a message; the messages raised here name
what is wrong and never quote a value that could hold a piece of the password.
"""

import re
from collections.abc import Mapping
from types import MappingProxyType
from urllib.parse import quote, unquote, urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from habitat_operator.api.common import Reason
from habitat_operator.errors import PermanentError

APPLICATION_NAME = "habitat-operator"
DEFAULT_CONNECT_TIMEOUT_SECONDS = "10"
REDACTED = "***"

# libpq's connection parameters that have an environment variable (libpq docs, "Environment Variables").
_ENV_VARS = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "channel_binding": "PGCHANNELBINDING",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "sslmode": "PGSSLMODE",
    "requiressl": "PGREQUIRESSL",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "sslcertmode": "PGSSLCERTMODE",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "requirepeer": "PGREQUIREPEER",
    "require_auth": "PGREQUIREAUTH",
    "gssencmode": "PGGSSENCMODE",
    "gsslib": "PGGSSLIB",
    "gssdelegation": "PGGSSDELEGATION",
    "krbsrvname": "PGKRBSRVNAME",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "client_encoding": "PGCLIENTENCODING",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}

# libpq's enumerated parameters and the values it accepts (libpq docs, "Parameter Key Words").
_ENUMERATED = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "gssencmode": ("disable", "prefer", "require"),
    "channel_binding": ("disable", "prefer", "require"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
    "sslcertmode": ("disable", "allow", "require"),
    "load_balance_hosts": ("disable", "random"),
}

_DEFAULTS = {"application_name": APPLICATION_NAME, "connect_timeout": DEFAULT_CONNECT_TIMEOUT_SECONDS}

# The parts of the URI whose reading must not depend on the parser.
_COMPARED = ("host", "port", "user", "dbname")
# Characters that end the user information for one parser but not the other.
_BOUNDARY_CHARACTERS = "/?#"

# The one piece of the URI a libpq message quotes, first quote to last (it may hold quotes itself).
_QUOTED = re.compile(r'".*"', re.DOTALL)
# The libpq messages that quote something before that piece.
_SEPARATOR_MESSAGE = re.compile(r'(missing|extra) key/value separator "="')

AMBIGUOUS_MESSAGE = (
    "connection URI is ambiguous: libpq and URL parsers read its host, port, user or database"
    " differently; percent-encode special characters in the password (and in any other part)"
    " (/ as %2F, @ as %40, # as %23, ? as %3F, % as %25, [ and ] as %5B and %5D)"
)


class ConnectionTarget:
    """A parsed `postgresql://user:password@host:port/dbname?param=value` URI.

    `repr()` and `display` show only host, port and database, as libpq reads them.
    """

    __slots__ = ("_params", "_secrets", "_uri")

    def __init__(self, uri: str) -> None:
        self._uri = uri
        if not uri.startswith(("postgresql://", "postgres://")):
            raise PermanentError(
                Reason.INVALID_CONNECTION_URI, "connection string must be a postgresql:// URI"
            )
        if not _boundaries_are_unambiguous(uri):
            raise PermanentError(Reason.INVALID_CONNECTION_URI, AMBIGUOUS_MESSAGE)
        self._secrets = _raw_secrets(uri)
        try:
            parsed = conninfo_to_dict(uri)
        except psycopg.ProgrammingError as error:
            raise PermanentError(
                Reason.INVALID_CONNECTION_URI, f"invalid connection URI: {self._libpq_error(str(error))}"
            ) from None
        except UnicodeDecodeError:
            raise PermanentError(
                Reason.INVALID_CONNECTION_URI, "invalid connection URI: a percent-encoded value is not UTF-8"
            ) from None
        if "password" in parsed:
            self._secrets |= _forms(str(parsed["password"]))
        as_url = _url_reading(uri)
        if as_url is None or any(_blank(parsed.get(k)) != _blank(as_url.get(k)) for k in _COMPARED):
            raise PermanentError(Reason.INVALID_CONNECTION_URI, AMBIGUOUS_MESSAGE)
        unsupported = sorted(set(parsed) - set(_ENV_VARS))
        if unsupported:
            raise PermanentError(
                Reason.INVALID_CONNECTION_URI,
                f"connection parameters not supported for pg_dump: {', '.join(unsupported)}",
            )
        _check_values(parsed)
        self._params = MappingProxyType({k: str(v) for k, v in (_DEFAULTS | parsed).items()})

    @property
    def host(self) -> str:
        return self._params.get("host", "localhost")

    @property
    def port(self) -> str:
        return self._params.get("port", "5432")

    @property
    def dbname(self) -> str:
        return self._params.get("dbname", self._params.get("user", ""))

    @property
    def display(self) -> str:
        """`host:port/dbname` as libpq reads them, safe for status and logs."""
        host = f"[{self.host}]" if ":" in self.host and "," not in self.host else self.host
        return f"{host}:{self.port}/{self.dbname}"

    def with_database(self, dbname: str) -> "ConnectionTarget":
        """The same server and credentials, connected to database `dbname` instead."""
        other = object.__new__(ConnectionTarget)
        other._uri, other._secrets = self._uri, self._secrets
        other._params = MappingProxyType({**self._params, "dbname": dbname})
        return other

    def with_application_name(self, name: str) -> "ConnectionTarget":
        """The same target, its sessions named `name` in pg_stat_activity (so they can be watched)."""
        other = self.with_database(self.dbname)
        other._params = MappingProxyType({**self._params, "application_name": name})
        return other

    def env(self) -> dict[str, str]:
        """PG* environment variables that make libpq tools connect to this target."""
        return {_ENV_VARS[name]: value for name, value in self._params.items()}

    def conninfo(self) -> str:
        """Connection string for psycopg (holds the password: never log it)."""
        return make_conninfo("", **self._params)

    def redact(self, text: str) -> str:
        """`text` with the URI and the password (raw or percent-encoded) replaced by ***."""
        text = text.replace(self._uri, REDACTED)
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text

    def _libpq_error(self, message: str) -> str:
        """libpq's complaint about the URI, redacted.

        libpq splits the query string at every `&`, so an unencoded `&` in a `password=` parameter
        puts the rest of the password in libpq's message as the name of a parameter: with a
        password in the query string, no quoted piece of the URI is shown.
        """
        if _query_passwords(self._uri):
            separator = _SEPARATOR_MESSAGE.match(message)
            start = separator.end() if separator else 0
            message = message[:start] + _QUOTED.sub(f'"{REDACTED}"', message[start:])
        return self.redact(message)

    def __repr__(self) -> str:
        return f"ConnectionTarget({self.display!r})"


def _boundaries_are_unambiguous(uri: str) -> bool:
    """Whether every parser finds the user information (if any) in the same place.

    libpq ends it at the first `@` (unless a `/` comes first), a URL parser at the last `@` before
    the first `/`, `?` or `#`. They agree only when there is at most one `@` and nothing before it
    can end the URI's authority. Checked before libpq parses, so that none of libpq's messages
    can quote a piece of a password that a misplaced boundary cut apart.
    """
    rest = uri.partition("://")[2]
    if rest.count("@") > 1:
        return False
    userinfo, at, _ = rest.partition("@")
    return not at or not any(c in userinfo for c in _BOUNDARY_CHARACTERS)


def _url_reading(uri: str) -> dict[str, str] | None:
    """host, port, user and dbname as a URL parser reads `uri`, in libpq's shape; None if it can't.

    urlsplit finds the parts; the host list (`h1:5432,h2:5433`) and the query parameters that
    override them are read the way libpq documents them.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    reading: dict[str, str] = {}
    userinfo, at, hostlist = parts.netloc.rpartition("@")
    if at and userinfo.partition(":")[0]:
        reading["user"] = unquote(userinfo.partition(":")[0])
    hosts, ports = [], []
    for spec in hostlist.split(","):
        if spec.startswith("["):
            host, _, port = spec[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = spec.partition(":")
        hosts.append(unquote(host))
        ports.append(port)
    if len(hosts) > 1 or hosts[0]:
        reading["host"] = ",".join(hosts)
    if len(ports) > 1 or ports[0]:
        reading["port"] = ",".join(ports)
    if parts.path.removeprefix("/"):
        reading["dbname"] = unquote(parts.path.removeprefix("/"))
    for pair in parts.query.split("&") if parts.query else ():
        key, _, value = pair.partition("=")
        if unquote(key) in _COMPARED:
            reading[unquote(key)] = unquote(value)
    return reading


def _blank(value: object) -> str | None:
    """An empty value and a missing one mean the same: libpq's default."""
    return str(value) if value else None


def _check_values(params: Mapping[str, object]) -> None:
    """libpq checks these only when connecting; check them now. Messages never quote a value."""
    for port in str(params.get("port", "")).split(","):
        if port and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise PermanentError(
                Reason.INVALID_CONNECTION_URI,
                "invalid port in connection URI: a port must be a number from 1 to 65535",
            )
    for name, allowed in _ENUMERATED.items():
        if name in params and str(params[name]) not in allowed:
            raise PermanentError(
                Reason.INVALID_CONNECTION_URI,
                f"invalid {name} in connection URI: must be one of {', '.join(allowed)}",
            )


def _raw_secrets(uri: str) -> set[str]:
    """The password as written in the URI (user information or `password=` query parameter).

    Called once the boundaries are known to be unambiguous, before libpq has parsed the URI, so
    that libpq's own error messages about it can be redacted.
    """
    rest = uri.partition("://")[2]
    userinfo, at, _ = rest.partition("@")
    secrets = set()
    if at and ":" in userinfo:
        secrets |= _forms(userinfo.partition(":")[2])
    for value in _query_passwords(uri):
        secrets |= _forms(value)
    return secrets


def _query_passwords(uri: str) -> list[str]:
    """The values of `password=` query parameters, as written."""
    query = uri.partition("://")[2].partition("?")[2]
    pairs = (pair.partition("=") for pair in query.split("&"))
    return [value for key, _, value in pairs if unquote(key) == "password"]


def _forms(password: str) -> set[str]:
    """`password` as given, percent-decoded and percent-encoded: every form a message may echo."""
    return {form for form in (password, unquote(password), quote(password, safe="")) if form}
