"""The `mmforge` command (`app`): Typer options -> a typed config -> one library call per command.

`options` holds the option types the commands share (one `Annotated` type per option; those of the commands
that train are made from `trainer.options`, as the torchrun entry's argparse is). The only wing of the
project that imports typer, and the only one that sees every wing and the trainer.
"""
