"""Built-in stand-ins for `token-broker demo` and the tests: never wired in by configuration."""
