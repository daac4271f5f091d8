"""A stand-in engine child for tests/test_engine_host.py, run as run_child runs vLLM's:
`python -m tests.engine_child spec.json out.json`. It writes what it was given (its parent,
directory, one variable) to out.json and exits with the spec's status, or hangs."""

import json
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    spec = json.loads(Path(sys.argv[1]).read_text())
    if spec.get("hang"):
        print(os.getpid(), flush=True)
        time.sleep(600)
    seen = {"parent": os.getppid(), "cwd": os.getcwd(), "variable": os.environ.get("SEEN")}
    Path(sys.argv[2]).write_text(json.dumps(seen))
    print(spec.get("say", ""), file=sys.stderr)
    sys.exit(spec.get("exit", 0))
