"""``[output]`` and ``[notify]``: the run directory, the recorder that fills it and the
notifiers it tells. The directory is checked before anything is built: a fresh run refuses
an earlier run's results unless ``overwrite``; ``resume`` verifies the checkpoint and refuses
a config that changes what the run trains (:mod:`fedloom.federation.rundir`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import ConfigError
from ..federation import Federation, load_checkpoint
from ..federation.recorder import CHECKPOINT, RunRecorder
from ..federation.rundir import check_params, check_resumable, check_run_dir
from ..observe import TelegramNotifier, WebhookNotifier
from ..observe.notify import Notifier
from ..simulation.distributed import in_distributed_env


def open_run_dir(cfg: Config, *, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """The verified checkpoint to resume from (None for a fresh run)."""
    run_dir = Path(cfg.output.dir) / cfg.name
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if not resume:
        return None
    saved = load_checkpoint(run_dir / CHECKPOINT)
    check_resumable(run_dir / CHECKPOINT, with_new_defaults(saved), cfg.effective())
    return saved


def with_new_defaults(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its saved config re-read by today's :class:`Config`, so a key added since
    the checkpoint was written (``train.precision``, say) counts at its default, not as a
    change; a saved config that no longer validates is compared as it was written."""
    try:
        saved = Config.model_validate(json.loads(state["config"])).effective()
    except (KeyError, TypeError, ValueError):  # pydantic's ValidationError is a ValueError
        return state
    return {**state, "config": json.dumps(saved)}


def restore(cfg: Config, fed: Federation, saved: dict[str, Any] | None) -> Federation:
    """``fed`` where the checkpoint left it (a model of another size is refused by name)."""
    if saved is not None:
        checkpoint = Path(cfg.output.dir) / cfg.name / CHECKPOINT
        check_params(checkpoint, saved, fed.params.numel())
        fed.load_state_dict(saved)
    return fed


def build_recorder(
    cfg: Config,
    report: dict[str, Any],
    *,
    resume: bool,
    overwrite: bool,
    progress: bool | None,
    networked: bool,
) -> RunRecorder | None:
    """The run directory's recorder, with ``report`` in its report; None on a torchrun rank
    other than 0 (rank 0 records)."""
    if not networked and in_distributed_env() and int(os.environ.get("RANK", "0")):
        return None
    check_writable(Path(cfg.output.dir))
    out = cfg.output
    return RunRecorder(
        Path(out.dir) / cfg.name,
        cfg.effective(),
        resume=resume,
        overwrite=overwrite,
        tensorboard=out.tensorboard,
        figures=out.figures,
        checkpoint=out.checkpoint,
        progress=out.progress if progress is None else progress,
        notifiers=notifiers(cfg),
        notify_on_finish=cfg.notify.on_finish,
        notify_on_failure=cfg.notify.on_failure,
        extra_report=report,
    )


def notifiers(cfg: Config) -> list[Notifier]:
    """A webhook and/or a Telegram bot, as ``[notify]`` configures them."""
    n = cfg.notify
    out: list[Notifier] = []
    if n.webhook_url:
        out.append(WebhookNotifier(n.webhook_url, proxy=n.proxy))
    if n.telegram_token and n.telegram_chat_id:
        out.append(
            TelegramNotifier(
                n.telegram_token, n.telegram_chat_id, n.telegram_api_base, proxy=n.proxy
            )
        )
    return out


def check_writable(directory: Path) -> None:
    """Refuse an ``output.dir`` that cannot be made or written, naming the key, rather than
    an OSError from the middle of making the run directory."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".fedloom-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(
            f"output.dir = {str(directory)!r} is not a writable directory: {e}"
        ) from e
