"""Settings from the environment (see settings.py)."""

from .settings import Settings, load_settings

__all__ = ["Settings", "load_settings"]
