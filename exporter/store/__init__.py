"""Where state lives: the state files in state_dir, typed, atomic, locked for one daemon."""
