"""``python -m aml_identity`` runs the ``aml-identity`` command."""

import sys

from aml_identity.cli import main

sys.exit(main())
