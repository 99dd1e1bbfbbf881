"""`python -m fedmed` runs the command line."""

from fedmed.cli.app import main

main()
