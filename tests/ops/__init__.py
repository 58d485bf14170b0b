"""Operations tests: install, configure, serve, back up, upgrade and monitor shelfsync as an operator would."""
