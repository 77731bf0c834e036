"""A libpq connection URI, split into what subprocesses, psycopg and log messages may each see.

pg_dump and pg_restore get the connection through PG* environment variables only, so the password
never shows up on a command line (and so in `ps` or /proc). Every text that could echo the URI is
passed through `ConnectionTarget.redact` before it reaches a message.
"""

from types import MappingProxyType
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from habitat_operator.ops.errors import OperationError

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

_DEFAULTS = {"application_name": APPLICATION_NAME, "connect_timeout": DEFAULT_CONNECT_TIMEOUT_SECONDS}


class ConnectionTarget:
    """A parsed `postgresql://user:password@host:port/dbname?param=value` URI.

    `repr()` and `display` show only host, port and database.
    """

    __slots__ = ("_params", "_secrets", "_uri")

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self._secrets = _raw_secrets(uri)
        if not uri.startswith(("postgresql://", "postgres://")):
            raise OperationError(
                "InvalidConnectionUri", "connection string must be a postgresql:// URI", retryable=False
            )
        try:
            parsed = conninfo_to_dict(uri)
        except psycopg.ProgrammingError as error:
            raise OperationError(
                "InvalidConnectionUri", f"invalid connection URI: {self.redact(str(error))}", retryable=False
            ) from None
        unsupported = sorted(set(parsed) - set(_ENV_VARS))
        if unsupported:
            raise OperationError(
                "InvalidConnectionUri",
                f"connection parameters not supported for pg_dump: {', '.join(unsupported)}",
                retryable=False,
            )
        self._params = MappingProxyType({k: str(v) for k, v in (_DEFAULTS | parsed).items()})
        if "password" in self._params:
            self._secrets.add(self._params["password"])

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
        """`host:port/dbname`, safe for status and logs."""
        host = f"[{self.host}]" if ":" in self.host and "," not in self.host else self.host
        return f"{host}:{self.port}/{self.dbname}"

    def with_database(self, dbname: str) -> "ConnectionTarget":
        """The same server and credentials, connected to database `dbname` instead."""
        other = object.__new__(ConnectionTarget)
        other._uri, other._secrets = self._uri, self._secrets
        other._params = MappingProxyType({**self._params, "dbname": dbname})
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

    def __repr__(self) -> str:
        return f"ConnectionTarget({self.display!r})"


def _raw_secrets(uri: str) -> set[str]:
    """The password as written in the URI, found without trusting the URI to be valid."""
    try:
        password = urlsplit(uri).password
    except ValueError:
        return set()
    return {password} if password else set()
