"""`dermmobile inspect`: not implemented yet."""

HELP = "(inspect: coming in a later issue)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from dermmobile.errors import DermmobileError

    raise DermmobileError("dermmobile inspect is not implemented yet")
