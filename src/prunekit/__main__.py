"""``python -m prunekit``: the same command line as ``prunekit``."""

from prunekit.cli import main

raise SystemExit(main())
