"""`python -m arflows` runs the command line, also under `torchrun -m arflows`."""

import sys

from arflows.cli import main

sys.exit(main())
