"""``python -m supervisor``: the CLI.

Kept free of imports at module level: a spawned worker re-imports the parent's main module
(as ``__mp_main__``), and that must cost nothing.
"""

if __name__ == "__main__":
    from supervisor.cli.main import main

    main()
