"""`python -m app.cli`: the `culturectl` command."""

from app.cli import main

main()
