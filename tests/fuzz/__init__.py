"""Fuzz suites: hostile and broken input (scenario files and --set, CLI arguments, result
bundles, the SQLite history) must end in a clear error with its file or key path and a
documented exit code, never a traceback. Hypothesis generates inputs; corpus/ holds one
file (or bundle patch) per case found by hand."""
