"""horde's coordinator: scenario, plan, aggregation, limits, bundles, CLI."""

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("horde")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
