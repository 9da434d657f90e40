"""`dermmobile predict`: not implemented yet."""

HELP = "(predict: coming in a later issue)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from dermmobile.errors import DermmobileError

    raise DermmobileError("dermmobile predict is not implemented yet")
