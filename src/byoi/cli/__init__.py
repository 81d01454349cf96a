"""The `byoi` command line: the server commands, and client commands that talk to the API over HTTP."""
