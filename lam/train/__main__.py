"""`python -m lam.train ...` is `lam train ...` (the spec's script-style invocation)."""

import sys

from lam.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
