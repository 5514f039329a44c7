"""lm-evaluation-harness task definitions (YAML) for the bundled alignment-tax items; see :mod:`.nlp`."""
