"""The web dashboard: a Vue 3 + Tailwind client of the HTTP API, shipped prebuilt.

``dist/`` is the Vite build of ``web/`` (committed: a fresh ``pip install`` serves the
dashboard without Node.js); ``dist/build-info.json`` records a hash of the sources it
was built from, and a test checks it matches (``scripts/build-web`` rebuilds).
"""

from pathlib import Path

DIST = Path(__file__).parent / "dist"
