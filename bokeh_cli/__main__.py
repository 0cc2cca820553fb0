"""``python -m bokeh_cli ...``: the ``bokeh`` command."""
import sys

from bokeh_cli import main

sys.exit(main())
