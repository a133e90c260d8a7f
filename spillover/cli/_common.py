"""CLI plumbing: quiet third-party logs, help text from config schemas, SpilloverError -> exit 2."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path

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


def check_before_work(*, out_dir: Path | None = None, run_dir: bool = False, new_dir: bool = False,
                      overwrite: bool = False,
                      resume: bool = False, out_file: Path | None = None, data: Iterable[str | None] = (),
                      questions: Iterable[str | None] = (), adapter: str | Path | None = None,
                      model: str | None = None, judge: str | None = None, judge_base_url: str | None = None,
                      judge_api_key_env: str | None = "OPENAI_API_KEY", grader: bool = False,
                      judge_flags: tuple[str, str, str] = ("--judge", "--judge-base-url", "--judge-api-key-env"),
                      ) -> str | None:
    """Check a command's inputs and outputs before any model is loaded, so a user mistake costs nothing:
    the output folder (``run_dir``: also that it may hold this run; ``new_dir``: that it is new or empty) or
    file, data and question files,
    the adapter against its base (returns the base model to use), and the judge's settings."""
    from spillover._io import clean_stale_temps
    from spillover._run import check_new_output_dir, check_output_dir, check_output_file, check_run_dir
    from spillover.data import resolve_data_path
    from spillover.errors import SpilloverError

    if out_dir is not None:
        if run_dir:
            check_run_dir(out_dir, overwrite=overwrite, resume=resume)
        else:
            check_new_output_dir(out_dir) if new_dir else check_output_dir(out_dir)
            clean_stale_temps(out_dir, recursive=True)  # what a killed earlier run's atomic writes left
    if out_file is not None:
        check_output_file(out_file)
    for ref in data:
        if ref is not None and resolve_data_path(ref).is_dir():
            raise SpilloverError(f"data file {resolve_data_path(ref)} is a folder", fix="give the path of a .jsonl file")
    for ref in questions:
        if ref is not None:
            from spillover.evaluate.questions import load_questions

            load_questions(ref)
    if judge is not None:
        from spillover.judge._spec import check_judge_args

        check_judge_args(judge, base_url=judge_base_url, api_key_env=judge_api_key_env, grader=grader,
                         flags=judge_flags)
    if adapter is not None:
        from spillover.models._load import check_adapter_base

        return check_adapter_base(adapter, model)
    return model
