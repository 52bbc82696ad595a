"""Connectors: how a vision tower's tokens become a language model's input embeddings.

Three designs, from the cheapest to the most selective:

* ``linear`` (LLaVA-1): one projection per vision token, so the LM sees every token;
* ``mlp`` (LLaVA-1.5's ``mlp2x_gelu``): the same with a GELU hidden layer, which aligns noticeably
  better for the same token count;
* ``qformer`` (BLIP-2's idea, without its text branch): a fixed set of learned queries cross-attends
  to the vision tokens, so the LM sees ``num_queries`` tokens whatever the image resolution - the
  choice when vision tokens are many and the LM context is short.

All take ``[N, T, vision_dim]`` and return ``[N, T', lm_dim]``; ``tokens_out(T)`` says how many tokens
an image becomes, which the prompt builder needs before any image is encoded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from polymodal.errors import ConfigError

CONNECTORS = ("linear", "mlp", "qformer")


class LinearConnector(nn.Module):
    def __init__(self, vision_dim: int, lm_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(vision_dim, lm_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.proj(tokens)

    def tokens_out(self, tokens_in: int) -> int:
        return tokens_in


class MLPConnector(nn.Module):
    """Linear -> GELU -> Linear; ``linear_1``/``linear_2`` as in Hugging Face's ``LlavaMultiModalProjector``."""

    def __init__(self, vision_dim: int, lm_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_dim, hidden_dim or lm_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden_dim or lm_dim, lm_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(tokens)))

    def tokens_out(self, tokens_in: int) -> int:
        return tokens_in


class QFormerConnector(nn.Module):
    """Learned queries that read the vision tokens through cross-attention (pre-norm decoder layers)."""

    def __init__(self, vision_dim: int, lm_dim: int, num_queries: int = 16, width: int | None = None, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        width = width or lm_dim
        if width % heads:
            raise ConfigError(f"qformer connector: width {width} must be divisible by heads {heads}")
        self.num_queries = num_queries
        self.queries = nn.Parameter(torch.randn(1, num_queries, width) * 0.02)
        self.vision_in = nn.Linear(vision_dim, width)
        layer = nn.TransformerDecoderLayer(width, heads, 4 * width, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerDecoder(layer, depth, norm=nn.LayerNorm(width))
        self.out = nn.Linear(width, lm_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        memory = self.vision_in(tokens)
        queries = self.queries.expand(tokens.shape[0], -1, -1)
        return self.out(self.layers(queries, memory))

    def tokens_out(self, tokens_in: int) -> int:
        return self.num_queries


def build_connector(kind: str, vision_dim: int, lm_dim: int, **options: Any) -> nn.Module:
    """The connector named ``kind`` (see :data:`CONNECTORS`); unknown options name the connector."""
    factories = {"linear": LinearConnector, "mlp": MLPConnector, "qformer": QFormerConnector}
    if kind not in factories:
        raise ConfigError(f"mllm connector: unknown kind {kind!r}; valid: {', '.join(CONNECTORS)}")
    try:
        return factories[kind](vision_dim, lm_dim, **options)
    except TypeError as e:
        raise ConfigError(f"mllm connector {kind!r}: {e}") from None
