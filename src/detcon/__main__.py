"""``python -m detcon ...`` (the form ``torchrun -m detcon pretrain`` uses)."""

from detcon.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
