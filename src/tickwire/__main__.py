"""``python -m tickwire`` runs the ``tickwire`` command."""

import sys

from .cli import main

sys.exit(main())
