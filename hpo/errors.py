"""The one exception type for bad input, the exit codes, and exceptions as one line of text."""

# Exit codes of the entry points.
EXIT_BAD_INPUT = 2  # an HpoError: one line on stderr, nothing in the store changed
EXIT_STORE_LOST = 75  # sysexits' EX_TEMPFAIL: the store went away mid-run; hpo.runs.workers starts the worker again
EXIT_INTERRUPTED = 130  # SIGINT/SIGTERM: the running trial is marked FAIL "interrupted"


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


def reason(error: BaseException, *, typed: bool = False, whole: bool = False, limit: int = 300) -> str:
    """An exception as one line: the innermost cause (the driver's or library's own words, not the
    wrappers'), its first line, or with ``whole`` all its lines joined (torchvision's download
    errors put the useful part on the second line); ``typed`` puts the exception's type first."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(getattr(error, "orig", None) or error).strip()
    text = " ".join(text.split()) if whole else (text.splitlines() or [""])[0]
    text = text[:limit]
    name = type(error).__name__
    if typed:
        return f"{name}: {text}" if text else name
    return text or name


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """ "1 trial", "2 trials": a count with its noun in the right number."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"
