"""``python -m prunekit.cli`` (and ``torchrun -m prunekit.cli``) runs the command line."""
import sys

from . import main

sys.exit(main())
