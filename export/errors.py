"""One exception type for everything that stops an export with a message for the user."""


class ExportError(RuntimeError):
    """An export that cannot go on; the message is one sentence meant for the user."""
