import sys

from lam.commands import main

sys.exit(main())
