"""`dermmobile train`: not implemented yet."""

HELP = "(train: coming in a later issue)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from dermmobile.errors import DermmobileError

    raise DermmobileError("dermmobile train is not implemented yet")
