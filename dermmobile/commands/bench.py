"""`dermmobile bench`: not implemented yet."""

HELP = "(bench: coming in a later issue)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from dermmobile.errors import DermmobileError

    raise DermmobileError("dermmobile bench is not implemented yet")
