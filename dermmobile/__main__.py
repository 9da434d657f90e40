"""`python -m dermmobile` is the same as the `dermmobile` console script."""

import sys

from dermmobile.cli import main

sys.exit(main())
