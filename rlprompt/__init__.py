"""rlprompt: find discrete prompts with RL, and use them (`PromptClassifier`)."""

__all__ = ["PromptClassifier"]


def __getattr__(name):
    # Imported on first use, so `import rlprompt.config` stays light (no torch).
    if name == "PromptClassifier":
        from rlprompt.classifier import PromptClassifier

        return PromptClassifier
    raise AttributeError(f"module 'rlprompt' has no attribute {name!r}")
