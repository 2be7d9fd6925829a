"""Writing a prompt as an episode: one token per step, the task LM's reward when it is finished."""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from rlprompt.rewards import classification_reward
from rlprompt.tasks import Example


class PromptClassificationEnv(gym.Env):
    """Action: the next prompt token id. Observation: the prompt's token ids so far, padded with
    `vocab_size`. An episode is `prompt_length` actions; the last step's reward is RLPrompt's
    classification reward of the finished prompt on `examples`, scored by the frozen task LM.

    `score_batch` scores many finished prompts in one scorer call (what training uses).
    `reward_fn` maps ((P, E, V) log-probs, (E,) labels) to (reward (P,), accuracy (P,)); the default
    is RLPrompt's classification reward, `rlprompt.rewards.DistillationReward` rewards matching a
    teacher prompt instead (its "accuracy" is the agreement with the teacher).
    """

    metadata = {"render_modes": []}

    def __init__(self, scorer, examples: list[Example], decode: Callable[[list[int]], str],
                 vocab_size: int, prompt_length: int = 5, reward_fn: Callable = classification_reward):
        super().__init__()
        self.scorer = scorer
        self.examples = list(examples)
        self.sentences = [e.text for e in self.examples]
        self.labels = torch.tensor([e.label for e in self.examples])
        self.decode = decode
        self.vocab_size = vocab_size
        self.prompt_length = prompt_length
        self.reward_fn = reward_fn
        self.action_space = spaces.Discrete(vocab_size)
        self.observation_space = spaces.MultiDiscrete([vocab_size + 1] * prompt_length)
        self._tokens: list[int] = []

    def _obs(self) -> np.ndarray:
        obs = np.full(self.prompt_length, self.vocab_size, dtype=np.int64)
        obs[: len(self._tokens)] = self._tokens
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._tokens = []
        return self._obs(), {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not a token id in [0, {self.vocab_size})")
        self._tokens.append(int(action))
        terminated = len(self._tokens) >= self.prompt_length
        reward, info = 0.0, {}
        if terminated:
            rewards, accuracies, texts = self.score_batch([self._tokens])
            reward = float(rewards[0])
            info = {"prompt": texts[0], "accuracy": float(accuracies[0])}
        return self._obs(), reward, terminated, False, info

    def score_batch(self, token_rows) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Finished prompts (token id rows) -> (raw rewards, accuracies, prompt texts)."""
        texts = [self.decode(list(map(int, row))) for row in token_rows]
        rewards, accuracies = self.score_texts(texts)
        return rewards, accuracies, texts

    def score_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Prompt texts -> (raw rewards, accuracies) on this env's examples."""
        logprobs = self.scorer.score(texts, self.sentences)
        reward, accuracy = self.reward_fn(logprobs, self.labels)
        return reward.numpy(), accuracy.numpy()
