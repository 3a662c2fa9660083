"""``python -m export`` is ``vision-api export``."""

from export.cli import main

raise SystemExit(main())
