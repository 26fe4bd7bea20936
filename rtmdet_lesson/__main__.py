"""``python -m rtmdet_lesson``: the command line of ``rtmdet_lesson.cli``."""

import sys

from rtmdet_lesson.cli import main

if __name__ == "__main__":
    sys.exit(main())
