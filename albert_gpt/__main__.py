import logging
import os
import sys

from albert_gpt.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # Under torchrun, torch's C++ teardown at interpreter exit sometimes aborts ("terminate called
    # without an active exception") after all work is done and the process group is destroyed.
    # Everything is flushed and closed by now, so leave without running those destructors.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
