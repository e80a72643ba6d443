"""Print the commands of one fenced ```bash block of a README section, one per line, exactly as
written (comments included: bash ignores them), so CI runs what a reader copies.

    python3 .ci/readme_commands.py README.md "Quickstart" 1   # the section's first bash block
"""

import re
import sys


def commands(text: str, section: str, index: int) -> list[str]:
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not match:
        raise SystemExit(f"README has no section '## {section}'")
    blocks = re.findall(r"^```bash\n(.*?)^```", match.group(1), re.M | re.S)
    if len(blocks) < index:
        raise SystemExit(f"section '{section}' has {len(blocks)} bash blocks, not {index}")
    return [line for line in blocks[index - 1].splitlines() if line.strip()]


if __name__ == "__main__":
    path, section, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
    print("\n".join(commands(open(path).read(), section, index)))
