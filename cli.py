"""`python cli.py ...` behaves exactly like the installed `promptus` command."""

from promptus_codec.cli import main

if __name__ == "__main__":
    main()
