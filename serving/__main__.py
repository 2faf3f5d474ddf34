"""``python -m serving`` == ``dlserve serve``."""

import sys

from dlserve.cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
