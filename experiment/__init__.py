"""One training or evaluation run: its flags, its folder and its record."""
