"""The CLI's subcommands, one module each (`lowbit.cli` imports one only when it runs); the
options and checks they share are in `options`."""
