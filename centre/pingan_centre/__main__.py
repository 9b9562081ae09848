"""`python -m pingan_centre …` is `pingan-centre …`."""

import sys

from pingan_centre.cli import main

sys.exit(main())
