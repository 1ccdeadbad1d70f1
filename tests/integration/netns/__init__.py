"""Helpers of tests/integration/test_netns_faults.py: a Ray cluster in network namespaces."""
