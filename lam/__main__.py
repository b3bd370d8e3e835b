import sys

from lam.commands import main

if __name__ == "__main__":
    sys.exit(main())
