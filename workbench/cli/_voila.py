"""Voila for `workbench dashboard`, launched so that closing the page shuts its kernel down.

Voila's page posts ``/voila/api/shutdown/<kernel>`` on ``beforeunload`` with the ``_xsrf``
cookie's value, but Voila 0.5 never sets that cookie, so the server answers 403 and every
visit leaves a kernel (about 240 MB, with its own fleet connection) running until Voila stops
(voila-dashboards/voila#1458). Reading the handler's ``xsrf_token`` before the kernel starts
makes tornado set the cookie on the page's response; the shutdown then passes the XSRF check
it is meant to pass, which is kept on.
"""

from __future__ import annotations

import sys
from typing import Any


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

    config = Config()
    config.VoilaConfiguration.prelaunch_hook = set_xsrf_cookie
    Voila.launch_instance(argv=sys.argv[1:] if argv is None else argv, config=config)


if __name__ == "__main__":
    main()
