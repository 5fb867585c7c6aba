"""Settings, names and the small helpers every layer uses; imports nothing else of the project."""
