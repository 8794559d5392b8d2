"""kinherit: pre-train larger language models faster by Knowledge Inheritance (Qin et al., NAACL 2022)."""

from kinherit.core.errors import KinheritError

__version__ = "0.1.0"
__all__ = ["InheritanceArguments", "InheritanceTrainer", "KinheritError", "__version__"]


def __getattr__(name: str):
    # The trainer pulls in transformers' Trainer stack; import it only when asked for.
    if name == "InheritanceTrainer":
        from kinherit.training.trainer import InheritanceTrainer

        return InheritanceTrainer
    if name == "InheritanceArguments":
        from kinherit.training.options import InheritanceArguments

        return InheritanceArguments
    raise AttributeError(name)
