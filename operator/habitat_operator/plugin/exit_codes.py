"""The plugin's exit codes, for cron jobs and CI."""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # healthy: nothing found
    FINDINGS = 1  # a check failed or a resource is failing
    COULD_NOT_CHECK = 2  # bad usage, kubectl failed or timed out, the apiserver unreachable
