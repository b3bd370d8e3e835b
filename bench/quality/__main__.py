"""`python -m bench.quality`: the yardstick (bench/quality/yardstick.py)."""

import sys

from bench.quality.yardstick import main

sys.exit(main())
