"""qadb: a database-centric platform for generative materials-discovery campaigns.

The package is layered, with imports pointing one way only::

    store  <-  chem  <-  models  <-  drivers / workflows  <-  campaign  <-  cli

`qadb.fidelity`, `qadb.errors` and `qadb.config` are leaves every layer may use.
"""

import os as _os

# spglib prints C-level warnings to stderr for every loose-tolerance fallback; they are noise here
_os.environ.setdefault("SPGLIB_WARNING", "OFF")

__version__ = "0.1.0"
