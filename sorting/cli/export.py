"""Placeholder: commands are registered by the owner of this module."""

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Register this module's subcommands."""
