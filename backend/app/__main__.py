"""`python -m app dev | serve | create-user | seed-demo | migrate | openapi | worker` (see app/cli.py)."""

from app.cli import main

raise SystemExit(main())
