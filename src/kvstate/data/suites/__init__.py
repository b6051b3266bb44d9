"""Builders of the built-in suites, one module per family. Each builder returns a :class:`Suite`
with splits unset; the registry assigns splits, caches and subsamples."""
