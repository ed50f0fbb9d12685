"""What the tests and the benchmarks share: processes they start (servers, commands) and the team tracking server."""
