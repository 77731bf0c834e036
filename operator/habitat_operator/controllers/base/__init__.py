"""What every kind's controller shares: the Kubernetes client, status, conditions, lifecycle, locks."""
