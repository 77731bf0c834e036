"""ScalePolicy: a daemon per policy polls its triggers and writes the target's replicas."""
