"""taylorprune: structured pruning of CNNs driven by Taylor-expansion importance."""

from taylorprune.errors import UserError
from taylorprune.measure import count

__version__ = "0.1.0"

__all__ = ["UserError", "__version__", "count"]
