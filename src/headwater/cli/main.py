"""The whole command tree: importing a command module adds its commands to ``app`` (in this
order, the order of ``headwater --help``)."""

import importlib

from headwater.cli.app import app

COMMAND_MODULES = ("docs", "dlq", "signals", "stream", "serve", "config", "migrate")
for _name in COMMAND_MODULES:
    importlib.import_module(f"headwater.cli.{_name}")

__all__ = ["COMMAND_MODULES", "app"]
