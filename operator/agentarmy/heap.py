"""Process-wide garbage collector settings for long-running services."""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Move everything alive now out of the collector's reach.

    Objects that live as long as the process (modules, models, settings, clients) need no
    collection passes; freezing them keeps full collections, and their pauses, short
    under load. Call it once the process has started up.
    """
    gc.collect()
    gc.freeze()
