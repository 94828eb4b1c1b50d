"""``python -m filterlens``: the command line (:func:`filterlens.cli.main`), its exit status the process'."""
from .cli import main

raise SystemExit(main())
