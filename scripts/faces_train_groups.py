"""Write the train/validation groups of ../shared/data/faces-train: DFDC fakes with their source video.

Every DFDC face swap is made from a real video in the same folder; the manifest names it in the
fake's subtype ("dfdc_faceswap_of_<video>") and the real frame is "<video>.jpg". Grouping them keeps
a person and scene on one side of the split. Other files form groups of one.

Usage: python scripts/faces_train_groups.py DATA_ROOT OUT.csv
"""

import csv
import sys
from pathlib import Path

PREFIX = "dfdc_faceswap_of_"


def main(root: str, out: str) -> None:
    rows = []
    with open(Path(root) / "manifest.csv", newline="") as stream:
        for row in csv.DictReader(stream):
            path = row["path"]
            if not path.startswith("dfdc_faces224/"):
                continue
            if row["subtype"].startswith(PREFIX):
                group = row["subtype"][len(PREFIX):]
            else:
                group = Path(path).stem
            rows.append({"path": path, "group": f"dfdc:{group}"})
    with open(out, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["path", "group"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} grouped paths to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
