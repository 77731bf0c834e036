"""The migrations a Migration's source holds: inline, or the keys of its ConfigMaps, read in order.

What the apiserver cannot check (a ConfigMap key that is no migration file, one version in two
files or two ConfigMaps) is refused here as InvalidSpec, naming the field and the key.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from habitat_operator.api.common import Reason
from habitat_operator.api.migration import MIGRATION_KEY_PATTERN, MigrationReason, MigrationSource
from habitat_operator.controllers.base import kube
from habitat_operator.engines.postgres.migrations import Script
from habitat_operator.engines.threads import in_thread
from habitat_operator.errors import PermanentError, WaitingError

_KEY = re.compile(MIGRATION_KEY_PATTERN)


@dataclass(frozen=True)
class MigrationFile:
    """One version: its up script and, if any, its down script."""

    version: int
    name: str
    up: Script
    down: Script | None


def from_inline(source: MigrationSource) -> list[MigrationFile]:
    def script(index: int, version: int, name: str, direction: str, text: str) -> Script:
        return Script(version, name, text, f"spec.source.inline[{index}].{direction}")

    return sorted(
        (
            MigrationFile(
                m.version,
                m.name,
                script(i, m.version, m.name, "up", m.up),
                script(i, m.version, m.name, "down", m.down) if m.down else None,
            )
            for i, m in enumerate(source.inline or ())
        ),
        key=lambda f: f.version,
    )


def from_config_maps(config_maps: list[tuple[str, dict[str, str]]]) -> list[MigrationFile]:
    """Files from (name, data) pairs in spec order; raises InvalidSpec naming the ConfigMap and key."""
    scripts: dict[tuple[int, str], tuple[str, Script]] = {}
    for index, (config_map, data) in enumerate(config_maps):
        field = f"spec.source.configMapRefs[{index}] (ConfigMap {config_map})"
        for key in sorted(data):
            match = _KEY.match(key)
            if match is None:
                raise PermanentError(
                    Reason.INVALID_SPEC,
                    f"{field}: key {key!r} is not <version>_<name>.up.sql or <version>_<name>.down.sql",
                )
            version, direction = int(match["version"]), match["direction"]
            if version < 1:
                raise PermanentError(Reason.INVALID_SPEC, f"{field}: key {key!r}: a version must be positive")
            if (version, direction) in scripts:
                other = scripts[version, direction][0]
                raise PermanentError(
                    Reason.INVALID_SPEC, f"{field}: key {key!r}: version {version} also comes from {other}"
                )
            script = Script(version, match["name"], data[key], f"ConfigMap {config_map} key {key}")
            scripts[version, direction] = (f"{config_map}/{key}", script)
    files = []
    for (version, direction), (where, up) in sorted(scripts.items()):
        if direction == "down":
            if (version, "up") not in scripts:
                raise PermanentError(Reason.INVALID_SPEC, f"spec.source: {where} has no up script")
            continue
        down = scripts.get((version, "down"))
        files.append(MigrationFile(version, up.name, up, down[1] if down else None))
    return files


async def load(namespace: str, source: MigrationSource) -> list[MigrationFile]:
    """The source's migrations by version, every script hashed (off the event loop: a source may
    hold megabytes); ConfigMaps come from the Migration's own namespace only."""
    files = from_inline(source) if source.inline is not None else await _from_config_maps(namespace, source)
    await in_thread(digest, files)  # each Script keeps its checksum
    return files


async def _from_config_maps(namespace: str, source: MigrationSource) -> list[MigrationFile]:
    config_maps = []
    for ref in source.config_map_refs or ():
        try:
            data = await kube.read_config_map(namespace, ref.name)
        except kube.Forbidden:
            raise WaitingError(
                MigrationReason.CONFIG_MAP_NOT_FOUND,
                f"the operator is not allowed to read ConfigMap {namespace}/{ref.name} (check its RBAC)",
            ) from None
        if data is None:
            raise WaitingError(
                MigrationReason.CONFIG_MAP_NOT_FOUND, f"ConfigMap {namespace}/{ref.name} not found"
            )
        config_maps.append((ref.name, data))
    return from_config_maps(config_maps)


def digest(files: list[MigrationFile]) -> str:
    """Changes whenever any script changes: a failed run is not repeated on the same source."""
    hashed = hashlib.sha256()
    for file in files:
        hashed.update(
            f"{file.version}:{file.up.checksum}:{file.down.checksum if file.down else ''};".encode()
        )
    return hashed.hexdigest()[:16]
