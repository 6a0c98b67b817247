"""Real server processes for the tests (started as subprocesses on 127.0.0.1, free ports)."""
