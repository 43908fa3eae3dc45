"""``python -m cxrjax.train``: see cxrjax/train/cli.py."""

import sys

from cxrjax.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
