"""``python -m training ...`` is ``dlserve train ...``."""

import sys

from dlserve.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
