"""The control plane: etcd, kube-apiserver (RBAC, a token for the admin) and kube-controller-manager,
built from the Go modules pinned in tests/cluster."""

from __future__ import annotations

import ssl
import urllib.request
from pathlib import Path

from dev_stack.common import REPO, STACK_DIR, State, go_build, pid_alive, spawn, wait_until
from dev_stack.pki import ADMIN_USER, write_kubeconfig

CLUSTER_MODULE = REPO / "tests" / "cluster"


CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager")


def control_plane_binaries() -> Path:
    return go_build(CLUSTER_MODULE / "build.sh", "the control plane")


def start_control_plane(state: State) -> None:
    bin_dir = Path(state.bin_dir)
    pki = STACK_DIR / "pki"
    if not (pid_alive(state.pids.get("etcd")) and etcd_healthy(state)):
        client, peer = state.port("etcd"), state.port("etcd-peer")
        state.pids["etcd"] = spawn(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=default",
                f"--data-dir={STACK_DIR / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        wait_until("etcd", lambda: etcd_healthy(state), 30, STACK_DIR / "logs" / "etcd.log")

    if not (pid_alive(state.pids.get("kube-apiserver")) and apiserver_ready(state)):
        (STACK_DIR / "tokens.csv").write_text(f'{state.admin_token},{ADMIN_USER},1,"system:masters"\n')
        state.pids["kube-apiserver"] = spawn(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{state.ports['etcd']}",
                "--bind-address=127.0.0.1",
                f"--secure-port={state.port('apiserver')}",
                # No default route here: the apiserver cannot guess an address, and there are no nodes.
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={pki / 'serving.crt'}",
                f"--tls-private-key-file={pki / 'serving.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={STACK_DIR / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                "--allow-privileged=true",
                f"--cert-dir={STACK_DIR / 'apiserver-certs'}",
                "--v=0",
            ],
        )
        wait_until(
            "kube-apiserver", lambda: apiserver_ready(state), 90, STACK_DIR / "logs" / "kube-apiserver.log"
        )

    if (bin_dir / "kube-controller-manager").exists() and not pid_alive(
        state.pids.get("kube-controller-manager")
    ):
        write_kubeconfig(
            STACK_DIR / "controller-manager.kubeconfig",
            f"https://127.0.0.1:{state.ports['apiserver']}",
            state.admin_token,
        )
        kcm_config = str(STACK_DIR / "controller-manager.kubeconfig")
        state.pids["kube-controller-manager"] = spawn(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kcm_config}",
                f"--authentication-kubeconfig={kcm_config}",
                f"--authorization-kubeconfig={kcm_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={state.port('controller-manager')}",
                "--leader-elect=false",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                "--controllers=*,-nodeipam,-nodelifecycle,-service-lb-controller,-node-route-controller,"
                "-cloud-node-lifecycle-controller,-persistentvolume-binder-controller,-attachdetach",
                f"--cert-dir={STACK_DIR / 'controller-manager-certs'}",
            ],
        )


def etcd_healthy(state: State) -> bool:
    url = f"http://127.0.0.1:{state.ports['etcd']}/health"
    with urllib.request.urlopen(url, timeout=2) as response:
        return b'"health":"true"' in response.read()


def apiserver_ready(state: State) -> bool:
    return api_get(state, "/readyz") == 200 and api_get(state, "/api/v1/namespaces/default") == 200


def api_get(state: State, path: str) -> int:
    ctx = ssl.create_default_context(cafile=str(STACK_DIR / "pki" / "ca.crt"))
    request = urllib.request.Request(
        f"https://127.0.0.1:{state.ports['apiserver']}{path}",
        headers={"Authorization": f"Bearer {state.admin_token}"},
    )
    with urllib.request.urlopen(request, context=ctx, timeout=5) as response:
        return int(response.status)
