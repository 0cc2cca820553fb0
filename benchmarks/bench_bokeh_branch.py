"""Cost of one block's bokeh branch (forward + backward) at FLUX.1-dev sizes: the adapters' one-token shortcut
(V_b broadcast, ``bokeh_models.attention_processors.bokeh_attention``) against the attention it replaces (every
token attending to the bokeh token through ``scaled_dot_product_attention``), added to the block's
attention output as the processors do. Same inputs, same result; prints the median times and their ratio.

    python benchmarks/bench_bokeh_branch.py [--batch 1] [--tokens 1536] [--steps 20]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import measure  # noqa: E402
from bokeh_models.attention_processors import bokeh_attention  # noqa: E402
from bokeh_models.lora import LowRankLinear  # noqa: E402

HEADS, HEAD_DIM, CONTEXT, RANK = 24, 128, 3072, 128  # FLUX.1-dev and the released adapter (docs/design.md §3)


def attention_path(query: torch.Tensor, tokens: torch.Tensor, to_k: torch.nn.Module, to_v: torch.nn.Module) -> torch.Tensor:
    """The same branch through its attention path: the token given twice (two equal logits, weights 1/2, the same
    V_b), which costs what one key through softmax attention costs: the reference for the shortcut."""
    return bokeh_attention(query, tokens.expand(-1, 2, -1), to_k, to_v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--tokens", type=int, default=1536, help="sequence length: image + text tokens (default 1536: 512 px + 512 text)")
    parser.add_argument("--steps", type=int, default=20, help="timed calls per variant after 2 warm-up calls; the median is printed (default 20)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    to_k = LowRankLinear(CONTEXT, HEADS * HEAD_DIM, RANK).to(device)
    to_v = LowRankLinear(CONTEXT, HEADS * HEAD_DIM, RANK).to(device)
    torch.nn.init.normal_(to_v.up.weight, std=0.02)
    query = torch.randn(args.batch, HEADS, args.tokens, HEAD_DIM, device=device, dtype=dtype, requires_grad=True)
    hidden = torch.randn(args.batch, args.tokens, HEADS * HEAD_DIM, device=device, dtype=dtype, requires_grad=True)
    tokens = torch.randn(args.batch, 1, CONTEXT, device=device)

    def step(branch) -> None:
        out = hidden + branch(query, tokens, to_k, to_v).to(dtype)
        out.float().square().mean().backward()

    same = torch.allclose((hidden + bokeh_attention(query, tokens, to_k, to_v).to(dtype)).float(),
                          (hidden + attention_path(query, tokens, to_k, to_v).to(dtype)).float(), atol=1e-2 if dtype != torch.float32 else 1e-5)
    print(f"bokeh branch, one FLUX block: batch {args.batch}, {args.tokens} tokens, {HEADS} x {HEAD_DIM}, {dtype}, {device}"
          f"{f' ({torch.get_num_threads()} threads)' if device.type == 'cpu' else ''}; same output: {same}")
    reference, _ = measure(lambda: step(attention_path), device, args.steps)
    shortcut, _ = measure(lambda: step(bokeh_attention), device, args.steps)
    print(f"  attention over the bokeh token  {reference * 1e3:8.2f} ms")
    print(f"  V_b broadcast (the adapters')   {shortcut * 1e3:8.2f} ms   {reference / shortcut:.2f}x faster; x 57 blocks: "
          f"{(reference - shortcut) * 57 * 1e3:.0f} ms less per step")


if __name__ == "__main__":
    main()
