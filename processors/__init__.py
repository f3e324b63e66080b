"""Example stream processors, installed as ``onceflow.examples``; ``windowed_count`` is the
reference app: ``onceflow worker onceflow.examples.windowed_count``."""
