"""``python -m imgclf`` runs the command line (see :mod:`imgclf.cli.main`)."""

from imgclf.cli.main import run

run()
