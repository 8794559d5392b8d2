"""The one error type kinherit raises for bad input, so callers can tell user mistakes from bugs."""


class KinheritError(ValueError):
    """A problem with the user's input or environment; the message names the problem and the fix."""
