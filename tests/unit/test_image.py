"""The image's recipe: the Dockerfile passes hadolint, installs only what requirements.lock pins by
hash, runs as the Deployment's non-root user, and the lock satisfies pyproject.toml."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from habitat_operator.engines.postgres import recovery

ROOT = Path(__file__).parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
LOCK = (ROOT / "requirements.lock").read_text()
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s\\]+)", re.MULTILINE)


def locked_versions() -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in PIN.findall(LOCK)}


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "-"], input=DOCKERFILE, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_lock_satisfies_every_requirement_of_pyproject() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = pyproject["project"]["dependencies"] + pyproject["build-system"]["requires"]
    locked = locked_versions()
    for line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{name} is not in requirements.lock: run make lock"
        assert requirement.specifier.contains(locked[name]), f"{name}=={locked[name]} misses {line}"


def test_the_image_has_no_kubernetes_client() -> None:
    # Kopf imports it whenever it is installed: about 15 MB of RSS that the operator never uses.
    assert "kubernetes" not in locked_versions()


def test_every_pin_has_a_hash() -> None:
    entries = re.split(r"\n(?=[A-Za-z0-9])", LOCK.split("\n", 2)[2])
    assert entries and all("--hash=sha256:" in entry for entry in entries)


def test_image_installs_by_hash_and_runs_as_the_deployments_user() -> None:
    assert "--require-hashes -r /tmp/requirements.lock" in DOCKERFILE
    user = re.findall(r"^USER (\d+):\d+$", DOCKERFILE, re.MULTILINE)
    documents = yaml.safe_load_all((ROOT / "manifests" / "base" / "deployment.yaml").read_text())
    deployment = next(doc for doc in documents if doc["kind"] == "Deployment")
    pod_user = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert user == [str(pod_user)] and pod_user != 0


def test_image_installs_the_servers_a_point_in_time_restore_runs() -> None:
    """Recovery runs `/usr/lib/postgresql/<major>/bin/postgres` of the base backup's major version:
    the image installs 15, 16 and 17 from PostgreSQL's apt repository, without a cluster of their own."""
    majors = re.search(r'^ARG PG_SERVER_MAJORS="([0-9 ]+)"$', DOCKERFILE, re.MULTILINE)
    assert majors is not None and majors[1].split() == ["15", "16", "17"]
    assert 'read -r -a servers <<< "${PG_SERVER_MAJORS}"' in DOCKERFILE
    assert '"${servers[@]/#/postgresql-}"' in DOCKERFILE  # postgresql-15 postgresql-16 postgresql-17
    assert 'echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf' in DOCKERFILE
    assert Path("/usr/lib/postgresql") == recovery.SERVER_ROOT  # where Debian's packages put them
    expanded = subprocess.run(
        ["bash", "-c", 'read -r -a servers <<< "15 16 17"; echo "${servers[@]/#/postgresql-}"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert expanded.stdout.split() == ["postgresql-15", "postgresql-16", "postgresql-17"]
