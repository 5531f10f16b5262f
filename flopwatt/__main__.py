"""``python -m flopwatt`` runs the CLI."""

from flopwatt.cli import main

main()
