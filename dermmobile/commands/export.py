"""`dermmobile export`: not implemented yet."""

HELP = "(export: coming in a later issue)"


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    from dermmobile.errors import DermmobileError

    raise DermmobileError("dermmobile export is not implemented yet")
