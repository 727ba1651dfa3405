"""One training or evaluation run: its flags, its folder and its record; and the command-line layer (cli.py) every command shares."""
