"""Experiments: the YAML spec and its checks, the output folder's layout, the runner, the report, compute saved.

May import: every layer below (`core`, `data`, `models`, `inheritance`, `training`, `commands`); not the CLI.
"""
