"""Run at the start of every Python process a gated test starts (tests/gates.py)."""

import os

if os.environ.get("MODELPUB_TEST_GATE"):
    from tests.gates import install

    install(os.environ["MODELPUB_TEST_GATE"])
