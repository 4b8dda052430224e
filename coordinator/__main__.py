"""``python -m coordinator`` runs the coordinator CLI."""

from coordinator.cli import main

main()
