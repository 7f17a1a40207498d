"""One exception type for bad input, so the CLI can print a one-line error instead of a traceback."""


class CRLError(ValueError):
    """Bad input or configuration. The message names the problem and the fix."""


def exit_on_error(fn):
    """Print a `CRLError` as one line and exit 2 (Hydra would print a traceback)."""
    import functools
    import sys

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CRLError as e:
            print(f"crl: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
