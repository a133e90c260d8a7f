"""`spillover engines ...`: install and inspect inference engines that run in their own venv (vLLM)."""

from __future__ import annotations

from typing import Optional

import typer

engines_app = typer.Typer(help="Inference engines in their own venv (vLLM) for `--engine vllm` sampling.",
                          no_args_is_help=True)


@engines_app.command("install")
def engines_install(
    name: str = typer.Argument("vllm", help="Engine to install: vllm."),
    python: Optional[str] = typer.Option(None, help="Python interpreter for the engine's venv (default: the one "
                                         "running spillover)."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda: which build to install (default: cuda where "
                                         "nvidia-smi sees a GPU, else cpu)."),
    force: bool = typer.Option(False, help="Reinstall even when the engine is installed with the same packages."),
) -> None:
    """Create $SPILLOVER_HOME/engines/NAME/venv with the engine (once; a rerun is a no-op) and record its versions."""
    from spillover.engines import install_engine

    if device not in (None, "cpu", "cuda"):
        from spillover.errors import SpilloverError

        raise SpilloverError(f"unknown --device {device!r}", fix="use cpu or cuda (or leave it out)")
    install_engine(name, python=python, device=device, echo=typer.echo, force=force)


@engines_app.command("status")
def engines_status(name: str = typer.Argument("vllm", help="Engine: vllm.")) -> None:
    """Whether the engine is installed, where, and which versions."""
    from spillover.engines import engine_status

    s = engine_status(name)
    typer.echo(f"engine     {s['engine']}\ninstalled  {'yes' if s['installed'] else 'no'}\nfolder     {s['folder']}\n"
               f"machine    {s['machine_device']}")
    if not s["installed"]:
        typer.echo(f"(install with `spillover engines install {name}`)")
        return
    typer.echo(f"build      {s['distribution']} {s['version']} ({s['device']})")
    for pkg, version in s.get("versions", {}).items():
        typer.echo(f"  {pkg:12} {version}")
    typer.echo(f"size       {s['size_bytes'] / 2**30:.1f} GiB, installed {s['installed']} in {s['install_seconds']:.0f} s")
