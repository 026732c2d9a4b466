"""``python -m beatleader.cli``: the operator CLI."""

from beatleader.cli.main import main

main()
