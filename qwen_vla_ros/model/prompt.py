"""Token layout of one control step: a fixed text prefix, then one image span per camera.

The prefix (system text, embodiment prompt, task instruction) is constant while the task is,
so it is run once and cached; the per-step span is ``<|vision_start|> <|image_pad|> x n
<|vision_end|>`` for every camera in the embodiment's order, with n fixed by the checkpoint
resolution. Both are plain token ids, so transformers can run the identical sequence.
"""
from __future__ import annotations

from dataclasses import dataclass

from qwen_vla_ros.errors import InvalidArgumentError
from qwen_vla_ros.model.checkpoint import PromptSettings


@dataclass(frozen=True)
class VisionTokens:
    image: int
    start: int
    end: int


@dataclass(frozen=True)
class TokenLayout:
    prefix_ids: tuple[int, ...]
    step_ids: tuple[int, ...]
    image_positions: tuple[int, ...]  # indices into step_ids of the image placeholders

    @property
    def full_ids(self) -> list[int]:
        return [*self.prefix_ids, *self.step_ids]

    @property
    def mm_token_type_ids(self) -> list[int]:
        """1 on image tokens, 0 elsewhere: what transformers needs to build M-RoPE positions."""
        types = [0] * len(self.full_ids)
        for position in self.image_positions:
            types[len(self.prefix_ids) + position] = 1
        return types


def prefix_text(prompt: PromptSettings, embodiment_prompt: str, instruction: str, special_tokens: list[str]) -> str:
    for label, text in (("instruction", instruction), ("embodiment prompt", embodiment_prompt)):
        if not isinstance(text, str):
            raise InvalidArgumentError(f"{label} must be a string, got {type(text).__name__}")
        found = [token for token in special_tokens if token and token in text]
        if found:
            raise InvalidArgumentError(f"{label} contains reserved token(s) {found}")
    return prompt.template.format(
        system=prompt.system, embodiment=embodiment_prompt.strip(), instruction=instruction.strip()
    )


def step_ids(cameras: int, tokens_per_image: int, ids: VisionTokens) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Token ids of one step's camera spans and the positions of their image placeholders."""
    tokens: list[int] = []
    positions: list[int] = []
    for _ in range(cameras):
        tokens.append(ids.start)
        positions.extend(range(len(tokens), len(tokens) + tokens_per_image))
        tokens.extend([ids.image] * tokens_per_image)
        tokens.append(ids.end)
    return tuple(tokens), tuple(positions)
