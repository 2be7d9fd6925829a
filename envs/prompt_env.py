"""Writing a prompt as an episode: one token per step, the task LM's reward when it is finished.

`PromptClassificationEnv` is one episode (a `gym.Env`); `PromptBatchEnv` is the batched form the
trainers step (a `gymnasium.vector.VectorEnv`): one token for every prompt of the batch per step, and
the whole batch scored in one scorer call when the prompts are finished. `step_through` is the loop
that drives it with prompts a policy has already sampled.
"""

from __future__ import annotations

from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from rlprompt.rewards import classification_reward
from rlprompt.tasks import Example

PROGRESS_PAIRS = 50_000  # (prompt, example) pairs above which score_texts shows a progress bar


class PromptRewards:
    """Rewards of finished prompts on a fixed set of examples, through one scorer call.

    `reward_fn` maps ((P, E, V) log-probs, (E,) labels) to (reward (P,), accuracy (P,)); the default
    is RLPrompt's classification reward, `rlprompt.rewards.DistillationReward` rewards matching a
    teacher prompt instead (its "accuracy" is the agreement with the teacher).
    """

    def __init__(self, scorer, examples: list[Example], decode: Callable[[list[int]], str],
                 vocab_size: int, prompt_length: int = 5, reward_fn: Callable = classification_reward):
        self.scorer = scorer
        self.set_examples(examples)
        self.decode = decode
        self.vocab_size = vocab_size
        self.prompt_length = prompt_length
        self.reward_fn = reward_fn

    def set_examples(self, examples: list[Example]) -> None:
        """Score finished prompts on these examples from now on (the trainer's per-step mini-batch)."""
        self.examples = list(examples)
        self.sentences = [e.text for e in self.examples]
        self.labels = torch.tensor([e.label for e in self.examples])

    def score_tokens(self, token_rows) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Finished prompts (token id rows) -> (raw rewards, accuracies, prompt texts)."""
        texts = [self.decode(list(map(int, row))) for row in token_rows]
        rewards, accuracies = self.score_texts(texts)
        return rewards, accuracies, texts

    def score_texts(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Prompt texts -> (raw rewards, accuracies) on these examples."""
        if len(texts) * len(self.examples) > PROGRESS_PAIRS:  # a long call (a large dev set): show progress
            from rlprompt.evaluation import score_examples

            logprobs = score_examples(self.scorer, texts, self.examples, desc="scoring")
        else:
            logprobs = self.scorer.score(texts, self.sentences)
        reward, accuracy = self.reward_fn(logprobs, self.labels)
        return reward.numpy(), accuracy.numpy()


class PromptClassificationEnv(PromptRewards, gym.Env):
    """Action: the next prompt token id. Observation: the prompt's token ids so far, padded with
    `vocab_size`. An episode is `prompt_length` actions; the last step's reward is the reward of the
    finished prompt on `examples` (see `PromptRewards`), scored by the frozen task LM."""

    metadata = {"render_modes": []}

    def __init__(self, scorer, examples: list[Example], decode: Callable[[list[int]], str],
                 vocab_size: int, prompt_length: int = 5, reward_fn: Callable = classification_reward):
        PromptRewards.__init__(self, scorer, examples, decode, vocab_size, prompt_length, reward_fn)
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
            rewards, accuracies, texts = self.score_tokens([self._tokens])
            reward = float(rewards[0])
            info = {"prompt": texts[0], "accuracy": float(accuracies[0])}
        return self._obs(), reward, terminated, False, info


class PromptBatchEnv(PromptRewards, VectorEnv):
    """`num_envs` prompts written side by side: each step takes one token id per prompt ((num_envs,)
    actions) and returns (num_envs, prompt_length) observations padded with `vocab_size`. At step
    `prompt_length` every prompt is finished: the whole batch is scored in one scorer call, the
    rewards are returned, every episode terminates, and `infos` holds each prompt's text ("prompt")
    and accuracy ("accuracy"), with Gymnasium's "_prompt"/"_accuracy" masks.

    Gymnasium's next-step autoreset: the step after the episodes end starts new ones (the actions are
    ignored, rewards are 0); calling `reset()` between batches does the same.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, scorer, examples: list[Example], decode: Callable[[list[int]], str],
                 vocab_size: int, prompt_length: int = 5, num_envs: int = 16,
                 reward_fn: Callable = classification_reward):
        PromptRewards.__init__(self, scorer, examples, decode, vocab_size, prompt_length, reward_fn)
        if num_envs < 1:
            raise ValueError(f"num_envs must be at least 1, got {num_envs}")
        self.num_envs = num_envs
        self.single_action_space = spaces.Discrete(vocab_size)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.single_observation_space = spaces.MultiDiscrete([vocab_size + 1] * prompt_length)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self._tokens = np.zeros((num_envs, 0), dtype=np.int64)
        self._finished = False

    def _obs(self) -> np.ndarray:
        obs = np.full((self.num_envs, self.prompt_length), self.vocab_size, dtype=np.int64)
        obs[:, : self._tokens.shape[1]] = self._tokens
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._tokens = np.zeros((self.num_envs, 0), dtype=np.int64)
        self._finished = False
        return self._obs(), {}

    def step(self, actions):
        none = np.zeros(self.num_envs, dtype=bool)
        if self._finished:  # next-step autoreset
            obs, _ = self.reset()
            return obs, np.zeros(self.num_envs), none, none.copy(), {}
        actions = np.asarray(actions).reshape(-1)
        if actions.shape != (self.num_envs,) or not np.issubdtype(actions.dtype, np.integer) \
                or actions.min() < 0 or actions.max() >= self.vocab_size:
            raise ValueError(f"actions must be {self.num_envs} token ids in [0, {self.vocab_size}), "
                             f"got {actions!r}")
        self._tokens = np.concatenate([self._tokens, actions.astype(np.int64)[:, None]], axis=1)
        rewards, infos = np.zeros(self.num_envs), {}
        self._finished = self._tokens.shape[1] >= self.prompt_length
        if self._finished:
            raw, accuracies, texts = self.score_tokens(self._tokens)
            rewards = raw.astype(np.float64)
            every = np.ones(self.num_envs, dtype=bool)
            infos = {"prompt": np.array(texts, dtype=object), "_prompt": every,
                     "accuracy": accuracies, "_accuracy": every.copy()}
        return self._obs(), rewards, np.full(self.num_envs, self._finished), none, infos


def step_through(envs: PromptBatchEnv, tokens) -> tuple[np.ndarray, dict]:
    """Play prompts a policy has already sampled ((num_envs, prompt_length) token ids) through the
    batched env, one column per step, from a reset; returns the final step's (rewards, infos)."""
    tokens = np.asarray(tokens.cpu() if isinstance(tokens, torch.Tensor) else tokens)
    if tokens.ndim != 2 or tokens.shape[1] != envs.prompt_length:
        raise ValueError(f"expected prompts of {envs.prompt_length} tokens, got shape {tokens.shape}")
    envs.reset()
    for column in tokens.T:
        _, rewards, terminated, _, infos = envs.step(column)
    return rewards, infos
