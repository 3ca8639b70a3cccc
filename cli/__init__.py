"""The ``mss`` command line: parse, call one service function, print."""
