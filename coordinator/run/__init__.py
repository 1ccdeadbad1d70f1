"""One run: the run session, summary and manifest, live view, Prometheus, target probe."""
