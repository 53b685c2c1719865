"""The subcommands of `bertforge`: one module each (add_arguments + run), and argument blocks they share."""


def add_fast_path_arguments(p) -> None:
    """--precision and --compile, shared by the commands that run a model for inference (serve, predict)."""
    p.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="weights: fp32, bf16 (AMX on CPUs with it; ~2x faster there) or int8 (dynamic "
                   "quantization); check the score change with `bertforge evaluate` first (default: fp32)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the encoder for every input shape before starting (fp32/bf16; ~1.25x "
                   "faster at batch 32 x 128 tokens; takes a minute or so, cached on disk for the next start)")


def given_flags(args, names: tuple[str, ...]) -> list[str]:
    """The options among ``names`` (argparse dests) given on the command line, as typed ("--name", or
    "--no-name" for a BooleanOptionalAction set to False): those options have no argparse default, so a
    value other than None (or "") was typed."""
    return [f"--{'no-' if getattr(args, n) is False else ''}{n.replace('_', '-')}" for n in names
            if getattr(args, n) not in (None, "")]


def _whole(text: str, low: int, high: int | None, what: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def positive(text: str) -> int:
    """argparse type: a whole number >= 1 (sizes, counts, limits)."""
    return _whole(text, 1, None, "a whole number >= 1")


def non_negative(text: str) -> int:
    """argparse type: a whole number >= 0 (where 0 means 'off' or 'default')."""
    return _whole(text, 0, None, "a whole number >= 0")


def port(text: str) -> int:
    """argparse type: a TCP port, 0 (any free port) to 65535."""
    return _whole(text, 0, 65535, "a port from 0 to 65535")
