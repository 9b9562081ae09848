import sys

from pingan_sim.cli import main

sys.exit(main())
