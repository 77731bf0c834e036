"""PostgreSQL: connection URIs, pg_dump and pg_restore as child processes, SQL through psycopg."""
