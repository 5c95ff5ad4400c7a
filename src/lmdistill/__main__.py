"""``python -m lmdistill``, the same as the ``lmdistill`` command (``accelerate launch -m lmdistill ...``)."""

import sys

from lmdistill.cli import main

sys.exit(main())
