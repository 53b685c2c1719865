"""The subcommands of `bertforge`: one module each (add_arguments + run), and argument blocks they share."""


def add_fast_path_arguments(p) -> None:
    """--precision and --compile, shared by the commands that run a model for inference (serve, predict)."""
    p.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                   help="weights: fp32, bf16 (AMX on CPUs with it; ~2x faster there) or int8 (dynamic "
                   "quantization); check the score change with `bertforge evaluate` first (default: fp32)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the encoder for every input shape before starting (fp32/bf16; ~1.25x "
                   "faster at batch 32 x 128 tokens; takes a minute or so, cached on disk for the next start)")
