"""``python -m qadb.cli`` runs the command line."""

from qadb.cli import main

main()
