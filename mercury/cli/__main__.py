"""`python -m mercury.cli`: the same command as the `mercury` entry point."""

from mercury.cli import main

main()
