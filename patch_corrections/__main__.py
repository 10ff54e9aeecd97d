"""``python -m patch_corrections``."""

from .cli import main

main()
