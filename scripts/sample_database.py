"""Creates (or recreates) a small sample Habitat database and prints its URI.

Usage: sample_database.py NAME — connects with $HABITAT_PG_URI (a superuser on the local stack).
"""

from __future__ import annotations

import os
import sys

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
CREATE TABLE events (id bigserial PRIMARY KEY, kind text NOT NULL, payload jsonb NOT NULL);
INSERT INTO habitats (name, biome) VALUES ('reef', 'ocean'), ('tundra', 'polar'), ('canopy', 'forest');
INSERT INTO residents (habitat_id, name)
    SELECT 1 + g % 3, 'resident-' || g FROM generate_series(1, 5000) g;
INSERT INTO events (kind, payload)
    SELECT 'resident.joined', jsonb_build_object('resident', g) FROM generate_series(1, 20000) g;
"""


def main(name: str) -> str:
    admin_uri = os.environ["HABITAT_PG_URI"]
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    uri = admin_uri.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(uri) as conn:
        conn.execute(SCHEMA)
    return uri


if __name__ == "__main__":
    print(main(sys.argv[1]))
