"""The ``mss`` command line: parse, call one service function, print."""


def main() -> None:
    """The ``mss`` command (what the installed script calls).

    The command line's modules are imported here rather than when the script starts: a
    worker process of ``mss serve`` (document checks, IMAP envelopes) runs the script again
    to set up its ``__main__``, as multiprocessing does for a program started as a script,
    and then imports nothing of them (they would take about 45 MiB a worker).
    """
    from cli.main import app

    app()
