"""``python -m carpulse`` runs the CLI."""

from carpulse.cli import main

main()
