"""Where loraguard keeps what it fetches or prepares once per user (pure standard library).

The runtime's named-model registry and the converter both store files here; this module imports nothing of
either, so the converter runs without the native extension and neither package imports the other to find it.
"""

import os
from pathlib import Path


def cache_dir() -> Path:
    """$XDG_CACHE_HOME/loraguard, else ~/.cache/loraguard."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    # the XDG spec says relative values are invalid and must be ignored
    root = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return root / "loraguard"


def models_dir() -> Path:
    """Where named bases are prepared: $LORAGUARD_MODELS, else the cache's models/."""
    if explicit := os.environ.get("LORAGUARD_MODELS"):
        return Path(explicit).expanduser()
    return cache_dir() / "models"
