"""The result bundle: the on-disk contract, its store, outcome codes, JUnit and export."""
