"""``python -m experiments compare ...`` and ``python -m experiments study ...``, from the
repository root (see :mod:`experiments.cli`)."""

from experiments.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
