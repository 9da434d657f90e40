"""`dermmobile android`: not implemented yet."""

HELP = "(android: coming in a later issue)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from dermmobile.errors import DermmobileError

    raise DermmobileError("dermmobile android is not implemented yet")
