"""``python -m pipeline`` is the same as the ``riposte`` command."""

from pipeline.cli import main

raise SystemExit(main())
