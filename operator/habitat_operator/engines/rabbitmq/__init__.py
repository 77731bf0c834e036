"""RabbitMQ I/O: publishing (replay) and queue depth (scaling)."""
