"""Turning a pydantic ValidationError into one line that names the field, for `InvalidSpec`."""

from __future__ import annotations

from pydantic import ValidationError

from habitat_operator.errors import one_line


def describe_validation_error(error: ValidationError, root: str = "spec") -> str:
    parts = []
    for issue in error.errors(include_url=False, include_input=False):
        field = ".".join([root, *(str(part) for part in issue["loc"])])
        parts.append(f"{field}: {issue['msg']}")
    return one_line("; ".join(parts))
