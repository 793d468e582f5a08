"""``python -m builder`` runs the pybuild CLI."""

from builder.cli import main

if __name__ == "__main__":
    main()
