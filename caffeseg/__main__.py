"""``python -m caffeseg`` is the ``caffeseg`` console script."""
import sys

from caffeseg.cli import main

sys.exit(main())
