"""CLI plumbing: quiet third-party logs, help text from config schemas, SpilloverError -> exit 2."""

from __future__ import annotations

import os
import sys
import warnings

from pydantic import BaseModel

def quiet_libraries() -> None:
    """Keep the terminal for spillover's own progress bars and results."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|trl|peft|torch)\.")
    try:
        import datasets
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        datasets.utils.logging.disable_progress_bar()
        datasets.utils.logging.set_verbosity_error()
    except ImportError:  # pragma: no cover - both are dependencies
        pass


def describe(model: type[BaseModel], name: str) -> str:
    """A config field's description, so `--help` and the YAML schema say the same thing."""
    field = model.model_fields[name]
    default = field.default
    text = field.description or ""
    return f"{text} [default: {default}]" if default not in (None, ...) and not callable(default) else text


def fail(error: Exception, code: int = 2) -> None:
    """Print a user error without a traceback (plain text: messages may contain brackets) and exit."""
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(code)
