"""Observability: metrics log, TensorBoard, plots, terminal progress, notifications, report.

Importing this package is cheap: matplotlib, TensorBoard and rich are imported only when a
plot is drawn, a TensorBoard log is opened or a progress display is enabled.
"""

from .metrics import METRICS_FILE, MetricsLog, read_metrics
from .notify import Notifier, NotifyError, TelegramNotifier, WebhookNotifier, notify_all
from .plots import plot_curves
from .progress import Progress
from .report import summarize, write_report
from .tensorboard import TensorBoardLog, scalar_tag

__all__ = [
    "METRICS_FILE",
    "MetricsLog",
    "Notifier",
    "NotifyError",
    "Progress",
    "TelegramNotifier",
    "TensorBoardLog",
    "WebhookNotifier",
    "notify_all",
    "plot_curves",
    "read_metrics",
    "scalar_tag",
    "summarize",
    "write_report",
]
