"""One module per `kinherit` subcommand that does work: pretrain, evaluate, finetune, grow.

May import: every layer below (`core`, `data`, `models`, `inheritance`, `training`); not `experiment` or the CLI.
"""
