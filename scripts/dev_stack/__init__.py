"""The local stack: a real kube-apiserver (with etcd and kube-controller-manager), PostgreSQL, RabbitMQ,
Prometheus and an S3 server (versitygw).

Everything runs as private processes on free loopback ports under one folder (default `<repo>/.stack`),
so several stacks and the machine's own services never collide. `up` is idempotent, `down` stops
every process it started and removes the folder. `up` writes `<stack>/env`, a shell-sourceable file
with KUBECONFIG, HABITAT_PG_URI, HABITAT_AMQP_URI, HABITAT_RABBITMQ_API, HABITAT_PROMETHEUS_URL and
HABITAT_S3_*.

One module per service (pki, control_plane, postgres, rabbitmq, prometheus, s3), `stack` for all of
them together, and `__main__` for `scripts/dev-stack`.
"""
