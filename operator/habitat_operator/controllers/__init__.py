"""Reconcile logic, one package per kind, plus base/ and scheduling/.

Talks to Kubernetes only through `base.kube`; never imports kopf (the handlers adapt Kopf to it).
"""
