"""`python -m gpt2serve`: start the server, exactly as the `gpt2serve` command does."""

from gpt2serve.server.cli import main

if __name__ == "__main__":
    main()
