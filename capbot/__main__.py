"""`python -m capbot` runs the command-line interface."""

from capbot.cli import main

raise SystemExit(main())
