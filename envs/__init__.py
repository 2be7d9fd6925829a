"""Gymnasium environments of rlprompt; importing this package registers them.

    gymnasium.make(ENV_ID, scorer=..., examples=..., decode=..., vocab_size=...)        # one episode
    gymnasium.make_vec(ENV_ID, num_envs=16, vectorization_mode="vector_entry_point", scorer=..., ...)
"""

import gymnasium

from envs.prompt_env import PromptBatchEnv, PromptClassificationEnv, PromptRewards, step_through

ENV_ID = "rlprompt/PromptClassification-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.prompt_env:PromptClassificationEnv",
                       vector_entry_point="envs.prompt_env:PromptBatchEnv")

__all__ = ["ENV_ID", "PromptBatchEnv", "PromptClassificationEnv", "PromptRewards", "step_through"]
