"""`python -m reconciler.cli` is `reconciler`."""

import sys

from reconciler.cli.main import main

sys.exit(main())
