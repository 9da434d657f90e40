"""One module per CLI command; see dermmobile/cli.py for the contract."""
