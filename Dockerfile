# The operator's image: Python, the package, and pg_dump/pg_restore of the server's major version.
FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-client-15 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir . && rm -rf /src
# The Deployment runs it as this user with a read-only root filesystem.
USER 10001
ENTRYPOINT ["habitat-operator"]
CMD ["run", "--all-namespaces", "--log-format=json"]
