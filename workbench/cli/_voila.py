"""Voila for `workbench dashboard`, launched so that closing the page shuts its kernel down.

Voila's page posts ``/voila/api/shutdown/<kernel>`` on ``beforeunload`` with the ``_xsrf``
cookie's value, but Voila 0.5 never sets that cookie, so the server answers 403 and every
visit leaves a kernel (about 240 MB, with its own fleet connection) running until Voila stops
(voila-dashboards/voila#1458). Reading the handler's ``xsrf_token`` before the kernel starts
makes tornado set the cookie on the page's response; the shutdown then passes the XSRF check
it is meant to pass, which is kept on.

It also serves the page offline and quietly: the ``workbench`` template (Voila's lab template without
the Font Awesome stylesheets it links from a CDN) and no "Notebook ... is not trusted" line per
visit (Voila runs and shows the notebook whatever its trust; the line tells an operator nothing).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

# A Jupyter data directory holding voila/templates/workbench (found through JUPYTER_PATH).
SHARE = Path(__file__).resolve().parent / "_voila_share"
TEMPLATE = "workbench"


class _QuietTrust(logging.Filter):
    """Drops the contents manager's "Notebook %s is not trusted" warning, logged on every visit."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Notebook %s is not trusted"


def set_xsrf_cookie(request: Any, notebook: Any, cwd: str) -> Any:
    """Voila prelaunch hook: give the page the ``_xsrf`` cookie its shutdown request echoes.

    Example:
        >>> set_xsrf_cookie.__name__   # configured as VoilaConfiguration.prelaunch_hook by main()
        'set_xsrf_cookie'
    """
    _ = request.xsrf_token  # tornado sets the _xsrf cookie when the token is first read
    return notebook


def main(argv: list[str] | None = None) -> None:
    """Run Voila with :func:`set_xsrf_cookie` as its prelaunch hook; takes Voila's own arguments.

    Example:
        >>> main(["notebooks/dashboard.ipynb", "--port=8866", "--no-browser"])   # doctest: +SKIP
    """
    from traitlets.config import Config
    from voila.app import Voila

    paths = [str(SHARE), *filter(None, os.environ.get("JUPYTER_PATH", "").split(os.pathsep))]
    os.environ["JUPYTER_PATH"] = os.pathsep.join(dict.fromkeys(paths))  # read when Voila collects its templates
    config = Config()
    config.VoilaConfiguration.prelaunch_hook = set_xsrf_cookie
    config.VoilaConfiguration.template = TEMPLATE
    app = Voila.instance(config=config)
    app.initialize(sys.argv[1:] if argv is None else argv)
    app.log.addFilter(_QuietTrust())
    app.start()


if __name__ == "__main__":
    main()
