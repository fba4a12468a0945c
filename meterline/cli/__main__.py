"""`python -m meterline.cli`."""

import sys

from meterline.cli import main

sys.exit(main())
