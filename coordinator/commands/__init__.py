"""The horde commands, one module per family; coordinator/cli.py adds them to its group."""
