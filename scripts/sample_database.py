"""Creates (or recreates) a small sample Habitat database and prints its URI.

Usage: sample_database.py NAME — connects with $HABITAT_PG_URI (a superuser on the local stack).

Its `events` table follows the event-store contract of docs/replay.md: a mix of ledger, invoice and
payment events, allocation runs and monthly period-close workflows (by correlation id), as
`create_events` also writes them for the replay tests and benchmark.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import psycopg
from psycopg import sql

SCHEMA = """
CREATE TABLE habitats (id serial PRIMARY KEY, name text NOT NULL UNIQUE, biome text NOT NULL);
CREATE TABLE residents (
    id bigserial PRIMARY KEY,
    habitat_id int NOT NULL REFERENCES habitats (id),
    name text NOT NULL,
    joined_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO habitats (name, biome) VALUES ('reef', 'ocean'), ('tundra', 'polar'), ('canopy', 'forest');
INSERT INTO residents (habitat_id, name)
    SELECT 1 + g % 3, 'resident-' || g FROM generate_series(1, 5000) g;
"""

EVENTS_TABLE = """
CREATE TABLE {table} (
    id bigserial PRIMARY KEY,
    event_type text NOT NULL,
    occurred_at timestamptz NOT NULL,
    payload jsonb NOT NULL,
    routing_key text,
    correlation_id text,
    headers jsonb
)
"""
# Six types in turn; period-close and allocation events belong to workflows, the rest to invoices.
# About 450 bytes a message, like Habitat's own.
EVENTS_ROWS = """
INSERT INTO {table} (event_type, occurred_at, payload, routing_key, correlation_id, headers)
SELECT t.type,
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute',
       jsonb_build_object('sequence', g, 'account', 'acct-' || (g % 50), 'amount', (g * 37) % 10000,
                          'currency', 'EUR', 'note', repeat('habitat ', 40)),
       t.type,
       CASE WHEN t.type LIKE 'period.close.%'
                 THEN 'period-close-2026-' || lpad((1 + g / 8000 % 12)::text, 2, '0')
            WHEN t.type = 'allocation.computed' THEN 'allocation-run-' || (g / 600)
            ELSE 'invoice-' || (g / 4) END,
       jsonb_build_object('source', 'habitat-ledger', 'schema-version', 1)
  FROM generate_series({first}, {last}) g,
       LATERAL (SELECT (ARRAY['ledger.entry.posted', 'invoice.issued', 'payment.received',
                              'allocation.computed', 'period.close.step',
                              'period.close.completed'])[1 + g % 6] AS type) t
 ORDER BY g
"""


def create_events(conn: psycopg.Connection[Any], count: int, table: str = "events") -> None:
    """An event-store table with `count` events, ids 1..count (the contract's default columns)."""
    name = sql.Identifier(table)
    conn.execute(sql.SQL(EVENTS_TABLE).format(table=name))
    conn.execute(sql.SQL(EVENTS_ROWS).format(table=name, first=sql.Literal(1), last=sql.Literal(count)))


def main(name: str) -> str:
    admin_uri = os.environ["HABITAT_PG_URI"]
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    uri = admin_uri.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(uri) as conn:
        conn.execute(SCHEMA)
        create_events(conn, 20_000)
    return uri


if __name__ == "__main__":
    print(main(sys.argv[1]))
