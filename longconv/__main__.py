"""``python -m longconv``: the same as the ``longconv`` console command."""

import sys

from longconv._cli import main

if __name__ == "__main__":
    sys.exit(main())
