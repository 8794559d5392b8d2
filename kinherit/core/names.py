"""Names that become folder names (experiments, runs, groups): one check, so that a name read from a YAML file
or from a manifest on disk can never point outside the folder it is joined to."""

from __future__ import annotations

import re

from kinherit.core.errors import KinheritError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}")


def check_name(what: str, name: object) -> str:
    """Return `name` if it is one plain path component (letters, digits, `. _ + -`, not starting with a dot or
    dash, at most 100 characters); else raise an error naming `what` and the rule."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise KinheritError(f"{what} {name!r} is not a valid name: use letters, digits and . _ + - (starting with a "
                            "letter or digit, at most 100 characters); it becomes a folder name, so / and .. are "
                            "not allowed")
    return name
