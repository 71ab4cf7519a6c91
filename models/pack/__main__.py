"""``python -m models.pack DIR --out PACK``: the packing command (:func:`models.pack.main`).

A package's ``__main__`` rather than ``models/pack.py`` run as a script: the
decoding worker processes then import ``models.pack`` once, by name, and do not
run the command's module again as their main module (which made Python warn
"'models.pack' found in sys.modules ... unpredictable behaviour")."""
from models.pack import main

if __name__ == "__main__":
    raise SystemExit(main())
