"""``python -m taylorprune`` (also what ``torchrun -m taylorprune`` runs)."""

import sys

from taylorprune.cli import main

sys.exit(main())
