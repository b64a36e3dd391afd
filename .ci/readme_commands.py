"""Print the README's set-up commands, one per line: the bash blocks of its "## Set up" section.

CI runs exactly these, so that it fails whenever a newcomer following the README would.
"""

import re
import sys
from pathlib import Path

readme = Path(__file__).resolve().parents[1] / "README.md"
setup = readme.read_text(encoding="utf-8").split("\n## Set up\n", 1)[1].split("\n## ", 1)[0]
commands = [c.strip() for c in re.findall(r"```bash\n(.*?)```", setup, flags=re.S)]
if len(commands) != 2 or any("\n" in c for c in commands):
    sys.exit(f"README.md: expected two one-line set-up commands under '## Set up', got {commands}")
print("\n".join(commands))
