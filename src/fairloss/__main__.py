"""``python -m fairloss``: the same as the ``fairloss`` command."""

from fairloss.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
