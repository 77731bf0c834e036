"""Plain I/O with no Kubernetes: PostgreSQL's client tools and SQL, artifacts on disk, encryption.

Engines never import kopf, kubernetes or the controllers; they raise `habitat_operator.errors` and
return plain results, which the controllers turn into status.
"""
