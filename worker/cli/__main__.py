"""`python -m worker.cli`: the command line without the console script's settings check."""

from worker.cli import main

main()
