"""Train one model (or a sweep with -m). See `python scripts/train.py --help`."""

from dsconv.train import cli

if __name__ == "__main__":
    cli()
