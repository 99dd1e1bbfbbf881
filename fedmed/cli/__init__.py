"""The `fedmed` command line."""
