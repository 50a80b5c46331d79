"""``python -m vilalign`` (also what ``torchrun -m vilalign`` runs)."""

import sys

from vilalign.cli import main

sys.exit(main())
