"""The image-grounded text backbone shared by ITM/MLM pretraining and VQA fine-tuning.

Text tokens from a text encoder attend to the image encoder's tokens through cross-attention layers
(ALBEF-style). Pretraining (:class:`FusionEncoder`) and the VQA classifier hold the same backbone
under the same parameter names, so a VQA model starts from pretrained weights by loading them.
"""

from __future__ import annotations

from torch import Tensor, nn

from polymodal.modules.encoders.base import Encoder, EncoderOutput
from polymodal.modules.transformer import Transformer


class ImageTextBackbone(nn.Module):
    def __init__(
        self,
        image_encoder: Encoder,
        text_encoder: Encoder,
        fusion_depth: int = 2,
        fusion_heads: int | None = None,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        width = text_encoder.width
        self.width = width
        self.fusion = Transformer(
            width,
            fusion_depth,
            fusion_heads or max(1, width // 64),
            mlp_ratio,
            cross_attention=True,
            context_dim=image_encoder.width,
            dropout=dropout,
        )
        self.ln = nn.LayerNorm(width)

    def encode_image(self, images: Tensor) -> EncoderOutput:
        return self.image_encoder(images)

    def encode_text(self, text_ids: Tensor, text_mask: Tensor | None = None) -> EncoderOutput:
        return self.text_encoder(text_ids, text_mask)

    def fuse(self, text: EncoderOutput, image: EncoderOutput, rows: Tensor | None = None) -> EncoderOutput:
        """Cross-attend text tokens to image tokens; ``pooled`` is the fused first ([CLS]) token. Text ``i``
        reads image ``rows[i]`` (``None``: image ``i``), so several texts about one image need not
        repeat its tokens: each image's keys and values are projected once."""
        x = self.fusion(text.tokens, mask=text.mask, context=image.tokens, context_mask=image.mask, context_rows=rows)
        tokens = self.ln(x)
        return EncoderOutput(tokens=tokens, pooled=tokens[:, 0], mask=text.mask)

    def forward(self, images: Tensor, text_ids: Tensor, text_mask: Tensor | None = None) -> EncoderOutput:
        return self.fuse(self.encode_text(text_ids, text_mask), self.encode_image(images))
