"""The `mmforge` command (`app`): Typer options -> a typed config -> one library call per command.

The only module of the project that imports typer, and the only one that sees every wing and the trainer.
"""
