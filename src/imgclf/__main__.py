"""``python -m imgclf`` runs the command line (see :mod:`imgclf.cli`)."""

import sys

from imgclf.cli import main

sys.exit(main())
