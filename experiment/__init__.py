"""One training or evaluation run: its flags, its folder and its record; and cli.py, the command line of every
command."""
