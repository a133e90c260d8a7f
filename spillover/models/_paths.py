"""Where spillover caches things: ``$SPILLOVER_HOME`` or the user's cache dir."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def spillover_home() -> Path:
    root = os.environ.get("SPILLOVER_HOME")
    return Path(root).expanduser() if root else Path(platformdirs.user_cache_dir("spillover"))
