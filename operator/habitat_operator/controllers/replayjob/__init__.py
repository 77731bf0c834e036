"""ReplayJob: replaying stored events to RabbitMQ, one run per object."""
