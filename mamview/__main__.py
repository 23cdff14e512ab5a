"""`python -m mamview` is the `mamview` command."""

import sys

from mamview.cli import main

sys.exit(main())
