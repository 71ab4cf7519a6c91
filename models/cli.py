"""What the project's commands share: a mistake on the command line is one
``error: ...`` line on stderr and exit status 2 (argparse would print the
usage first; ``--help`` still shows it)."""
import argparse
import sys


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one ``error:`` line, status 2."""

    def error(self, message):
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
