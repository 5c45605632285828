"""`python -m ptransfer` runs the `ptransfer` command."""

import sys

from ptransfer.cli.main import main

sys.exit(main())
