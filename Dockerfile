# The operator's image: habitat-operator on a slim Python, with pg_dump and pg_restore 17 (which
# dump and restore PostgreSQL 15, 16 and 17 servers) and the servers of 15, 16 and 17 (a
# point-in-time Restore recovers a base backup on a private server of its own major version),
# non-root. Python packages come only from requirements.lock, by hash (`make lock` regenerates it
# from pyproject.toml).
FROM python:3.11-slim-bookworm AS base
ARG PG_MAJOR=17
ARG PG_SERVER_MAJORS="15 16 17"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian bookworm ships client 15 only; PostgreSQL's own apt repository has 17, and every server.
# The servers' packages must not create a cluster of their own: recovery makes its own, privately.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
 && install -d /usr/share/postgresql-common/pgdg \
 && curl -fsSL https://www.postgresql.org/media/keys/ACCC4CF8.asc \
      | gpg --dearmor -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.gpg \
 && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.gpg] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
      > /etc/apt/sources.list.d/pgdg.list \
 && install -d /etc/postgresql-common \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && read -r -a servers <<< "${PG_SERVER_MAJORS}" \
 && apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}" "${servers[@]/#/postgresql-}" \
 && apt-get purge -y curl gnupg \
 && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/*

FROM base AS build
COPY requirements.lock /tmp/requirements.lock
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --require-hashes -r /tmp/requirements.lock
COPY pyproject.toml README.md /src/
COPY operator /src/operator
# Dependencies and setuptools are already in place, installed by hash: no index access here.
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --no-build-isolation /src

FROM base
COPY --from=build /opt/venv /opt/venv
# Two malloc arenas for all threads: memory a burst freed goes back (health.limit_malloc_arenas).
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=2
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["habitat-operator"]
CMD ["run", "--all-namespaces"]
