"""`python -m metatele` runs the command line (also under torchrun)."""
from __future__ import annotations

import sys

from metatele.entry import main

sys.exit(main())
