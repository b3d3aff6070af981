"""``python -m deepfake_toolkit`` runs the command line."""

from .cli import console_main

console_main()
