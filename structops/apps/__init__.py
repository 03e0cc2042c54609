"""The ``structops`` command: argument parsing, printing, JSON and files; no numerics here.

Nothing in the library imports this package.
"""
