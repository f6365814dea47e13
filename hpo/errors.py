"""The one exception type for bad input: entry points print its message and exit 2."""


class HpoError(Exception):
    """Known bad input or environment; the message is one line a person can act on."""


def closest(name: str, known) -> str:
    """' (did you mean X?)' when a known name is close, else ''."""
    import difflib

    match = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.7)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown(what: str, name, known) -> HpoError:
    """Error for a name missing from a registry, listing the known names."""
    choices = ", ".join(sorted(map(str, known)))
    return HpoError(f"unknown {what} {name!r}{closest(name, known)}; choose one of: {choices}")


def reason(error: BaseException) -> str:
    """The innermost cause's first line: the driver's or library's own words, not the wrappers'."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(getattr(error, "orig", None) or error).strip()
    return (text.splitlines() or [type(error).__name__])[0][:300]
