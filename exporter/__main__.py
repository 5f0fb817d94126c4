"""`python -m exporter`: the same command line as `cutover`."""

from exporter.cli import main

raise SystemExit(main())
