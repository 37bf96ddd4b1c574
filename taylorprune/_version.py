"""The installed version, read from the package metadata (pyproject.toml is its one source)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("taylorprune")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
