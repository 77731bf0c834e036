"""`kubectl habitat`: the kubectl plugin (console script `kubectl-habitat`).

It reaches the apiserver only through the `kubectl` binary (plugin/kubectl.py), so it honours
--context, --kubeconfig and every auth method exactly as kubectl does; it shares the operator's API
models and engines, never its controllers, handlers or Kopf (an import-linter contract).
"""
