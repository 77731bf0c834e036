"""What every kind's controller shares: the Kubernetes calls, status, conditions, lifecycle, locks."""
