"""`dermmobile demo`: not implemented yet."""

HELP = "(demo: coming in a later issue)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from dermmobile.errors import DermmobileError

    raise DermmobileError("dermmobile demo is not implemented yet")
