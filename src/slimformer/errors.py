"""One exception type for user mistakes.

Anything a user can get wrong (a recipe key, a corrupt file, an option out of range) raises
`SlimformerError` with the numbers in the message. The CLI turns it into one line on stderr and exit
code 2; `assert` is kept for internal invariants only.
"""


class SlimformerError(Exception):
    """A user-facing error: the message alone must tell the user what to fix."""
