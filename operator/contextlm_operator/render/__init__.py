"""Pure render functions: spec in, manifest dicts out. No I/O, deterministic."""
