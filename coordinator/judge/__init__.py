"""Judging: thresholds and alert rules over statistics snapshots. Pure."""
