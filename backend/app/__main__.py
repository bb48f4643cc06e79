"""`python -m app dev | create-user | seed-demo | migrate | worker` (see app/cli.py)."""

from app.cli import main

raise SystemExit(main())
