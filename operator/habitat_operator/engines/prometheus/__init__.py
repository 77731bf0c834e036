"""Prometheus I/O: instant queries over the HTTP API."""
