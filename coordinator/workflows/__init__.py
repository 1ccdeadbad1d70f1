"""Long workflows built on runs: stress, nightly, monitor, microbench, history."""
