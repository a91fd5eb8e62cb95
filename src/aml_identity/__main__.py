"""``python -m aml_identity`` runs the ``aml-identity`` command."""

import sys

from aml_identity.cli import main

if __name__ == "__main__":
    sys.exit(main())
