"""The plugin's pure parts: its parser (kubectl's global flags anywhere), kubectl's argv, the output."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys

import pytest
import yaml

from habitat_operator.plugin import cli
from habitat_operator.plugin.kubectl import Kubectl
from habitat_operator.plugin.output import header_of, render, render_sections, table


def test_global_flags_work_before_and_after_the_command() -> None:
    before = cli.parser().parse_args(["-n", "shop", "-o", "json", "status"])
    after = cli.parser().parse_args(["status", "-n", "shop", "-o", "json", "--context", "prod"])
    for args in (before, after):
        assert (args.namespace, args.output, args.all_namespaces) == ("shop", "json", False)
    assert after.context == "prod"
    assert cli.parser().parse_args(["status"]).output == "table"  # the root's defaults survive


def test_a_command_may_redefine_a_global_flag() -> None:
    root = argparse.ArgumentParser()
    commands = root.add_subparsers(dest="command", parser_class=cli.CommandParser)
    report = commands.add_parser("report")
    report.add_argument("-o", "--output", default="report.zip")
    assert root.parse_args(["report", "-o", "out.zip"]).output == "out.zip"


@pytest.mark.parametrize("flags", [["-n", "a", "-A"], ["status", "-A", "-n", "a"]])
def test_namespace_and_all_namespaces_exclude_each_other(flags: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.parser().parse_args(flags if flags[0] == "status" else [*flags, "status"])
    assert exit_info.value.code == 2


def test_kubectl_passes_the_users_connection_flags() -> None:
    kubectl = Kubectl(context="prod", kubeconfig="/k", namespace="shop", timeout=7, binary="kubectl")
    assert kubectl.command("get", "habitat") == [
        "kubectl",
        "--context",
        "prod",
        "--kubeconfig",
        "/k",
        "--namespace",
        "shop",
        "--request-timeout=7s",
        "get",
        "habitat",
    ]
    assert Kubectl(all_namespaces=True).scope() == ["--all-namespaces"]


def test_kubectl_is_the_one_that_ran_the_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECTL_PLUGINS_CALLER", "/opt/kubectl-1.36")
    assert Kubectl().command()[0] == "/opt/kubectl-1.36"


def test_table_headers_and_cells() -> None:
    text = table([{"lastDecision": "scaled up\nby 2", "dirty": None, "ok": True}])
    assert text.splitlines() == ["LAST DECISION    DIRTY   OK", "scaled up by 2   -       yes"]
    assert header_of("walArchives") == "WAL ARCHIVES"
    assert table([]) == ""


def test_render_json_yaml_and_sections() -> None:
    rows = [{"name": "a", "age": 3}]
    for output, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        out = io.StringIO()
        render(rows, output, out)
        assert load(out.getvalue()) == rows
    out = io.StringIO()
    render_sections({"problems": [], "scalePolicies": rows}, "table", out)
    assert out.getvalue().splitlines()[0] == "SCALE POLICIES"  # an empty section is left out
    out = io.StringIO()
    render_sections({"problems": [], "scalePolicies": rows}, "json", out)
    assert json.loads(out.getvalue())["problems"] == []  # but kept for scripts


def test_starting_the_plugin_imports_no_heavy_library() -> None:
    """`kubectl habitat status -A` answers in under 2 s: the drivers and models load only for the
    command that uses them."""
    heavy = ("psycopg", "boto3", "botocore", "pika", "cryptography", "pydantic", "prometheus_client")
    code = f"import sys, habitat_operator.plugin.cli; print(*sorted(set({heavy!r}) & set(sys.modules)))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert loaded.stdout.split() == []
