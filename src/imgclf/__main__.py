"""``python -m imgclf`` runs the command line (see :mod:`imgclf.cli`)."""

from imgclf.cli import run

run()
