"""``python -m spillover`` runs the same CLI as the ``spillover`` command."""

from spillover.cli import main

if __name__ == "__main__":
    main()
