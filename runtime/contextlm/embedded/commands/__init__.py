"""One module per client subcommand, in the shape the CLI's COMPONENTS table expects
(`add_arguments` and `run`); the code is in ..client."""
