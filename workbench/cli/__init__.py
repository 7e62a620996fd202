"""The `workbench` command line (see `workbench --help`)."""

from workbench.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
