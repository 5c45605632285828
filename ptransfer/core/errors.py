"""One exception type for bad input: the message says what is wrong and what to do."""


class PtransferError(Exception):
    """Bad input or state that the user can fix.

    The CLI prints only the message (no traceback), so every message must name
    the problem and the fix, e.g. "unknown preset 't5_tny'; did you mean
    't5_tiny'? Known presets: ...".
    """


class ConfigError(PtransferError):
    """A gin binding, macro, preset or task name that is missing or wrong."""


class CheckpointError(PtransferError):
    """A checkpoint or prompt file that is missing, corrupt or mismatched."""


class DataError(PtransferError):
    """A dataset file or split that is missing, empty or malformed."""


def close_matches_hint(name: str, known) -> str:
    """' Did you mean X?' plus the known names, for unknown-name errors."""
    import difflib

    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} Known: {', '.join(known)}."
