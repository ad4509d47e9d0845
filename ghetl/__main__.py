"""The `ghetl` command: `python -m ghetl` and the console script both start here."""

import sys


def main() -> None:
    # httpx imports its own command-line client (click, rich and pygments: 0.07 to 0.1 s of
    # every start, measured) whenever those happen to be installed; no ghetl process runs it.
    # None in sys.modules makes an import of that name fail (the import system's documented way); typeshed
    # allows only modules there.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    from .cli import run

    run()


if __name__ == "__main__":
    main()
