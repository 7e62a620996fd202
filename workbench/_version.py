"""The package version, in a base module every layer may import (the agent reports it)."""

__version__ = "0.1.0"
