"""Flower glue: message formats, the site and server sides of a round, the engines."""
