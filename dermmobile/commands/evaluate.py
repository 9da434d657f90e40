"""`dermmobile evaluate`: not implemented yet."""

HELP = "(evaluate: coming in a later issue)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from dermmobile.errors import DermmobileError

    raise DermmobileError("dermmobile evaluate is not implemented yet")
