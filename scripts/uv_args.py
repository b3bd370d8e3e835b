"""Print pip's package sources as uv flags, one per line (used by scripts/setup.sh).

uv does not read pip's configuration. So that both install the same versions from the same
places, the indexes, wheel folders and constraints pip is configured with (its config files
and PIP_* variables, as `pip config list` shows them) are passed to uv explicitly."""

import shlex
import subprocess
import sys

FLAGS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
         "constraint": "--constraint"}


def main() -> None:
    listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False).stdout
    pairs: dict[tuple[str, str], None] = {}  # in order, each once
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        flag = FLAGS.get(key.rpartition(".")[2])
        if flag and value:
            if flag == "--index-url":  # one only: the last scope listed (the environment) wins
                pairs = {p: None for p in pairs if p[0] != flag}
            for item in shlex.split(value)[0].split():
                pairs[flag, item] = None
    print("\n".join(word for pair in pairs for word in pair))


if __name__ == "__main__":
    main()
