"""Stream processors that onceflow runs; ``windowed_count`` is the reference app."""
