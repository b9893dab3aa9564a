"""Print pip constraints pinning each runtime dependency to the lowest version setup.cfg admits.

``requests>=2.25`` becomes ``requests==2.25`` (markers are kept: pip evaluates them). Fails on a
requirement without a lower bound. urllib3 comes with requests, but the library imports it too, so it
is pinned to the oldest that requests 2.25 admits, where that one can be imported at all (before 3.12:
its bundled six fails on 3.12 and later, whoever imports it).
"""

import configparser
import re
import sys
from pathlib import Path

config = configparser.ConfigParser()
config.read(Path(__file__).resolve().parent.parent / "setup.cfg")
for line in config["options"]["install_requires"].strip().splitlines():
    requirement, _, marker = line.partition(";")
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", requirement)
    if match is None:
        sys.exit(f"{line!r}: a runtime dependency needs exactly one lower bound (name>=version)")
    print(f"{match.group(1)}=={match.group(2)}" + (f";{marker}" if marker else ""))
print('urllib3==1.21.1; python_version < "3.12"')
