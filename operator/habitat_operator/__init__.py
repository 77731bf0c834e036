"""habitat-operator: Habitat's runbooks as Kubernetes custom resources."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("habitat-operator")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+unknown"
