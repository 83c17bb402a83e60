"""Reading a finished run for people: `pipeline report`, `compare`, `double-win`, plots."""
