"""Gymnasium environments of rlprompt; importing this package registers them."""

import gymnasium

from envs.prompt_env import PromptClassificationEnv

ENV_ID = "rlprompt/PromptClassification-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.prompt_env:PromptClassificationEnv")

__all__ = ["ENV_ID", "PromptClassificationEnv"]
