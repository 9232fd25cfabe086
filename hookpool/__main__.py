"""``python -m hookpool``: a short demo of the lifecycle hooks."""

from hookpool._demo import main

if __name__ == "__main__":
    raise SystemExit(main())
