"""reload-sidecar: safe runtime config reload for Kubernetes pods."""

from .settings import Settings, SettingsError

__all__ = ["Settings", "SettingsError", "__version__"]
__version__ = "0.1.0"
