"""CLI subcommands. Each module here defines `register(subparsers)`, adding one or more
subcommands whose `func(args) -> int` runs them; tracer.cli discovers them all.
Modules whose name starts with "_" are helpers the commands share."""
